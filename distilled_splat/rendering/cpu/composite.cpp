// Front-to-back alpha compositing of projected Gaussians on the CPU, forward and backward.
//
// It composites exactly the (Gaussian, pixel) pairs that torch_rasterizer.py composites: a Gaussian touches the
// pixels whose centres lie in its footprint span (computed in Python, passed as inclusive x0 x1 y0 y1), a pair
// counts when sigma >= 0 and alpha >= 1/255, and a pixel stops at the first pair that would take transmittance
// to 1e-4 or below. Gaussians arrive sorted front to back.
//
// Work is split into square tiles. Each tile keeps the list of Gaussians whose span meets it, in depth order, and
// each Gaussian visits only the pixels of its span inside the tile. Threads take tiles from a shared counter, but
// a tile writes only its own pixels (forward) and its own entries of a per-(tile, Gaussian) gradient buffer
// (backward); a second pass sums each Gaussian's entries in tile order. No float is ever accumulated by two
// threads, so the results are bit-identical at any thread count and under any scheduling.

#include "kernels.h"

#include <cmath>
#include <cstring>

namespace {

constexpr float kAlphaMax = 0.999f;
constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr double kTransmittanceMin = 1e-4;
// Per-entry gradient layout: mean x, mean y, conic a, b, c, opacity, |mean x|, |mean y|, then D colour channels.
constexpr int64_t kGeometryGrads = 8;

struct Grid {
  int64_t width, height, tile, tiles_x, tiles_y;
  Grid(int64_t w, int64_t h, int64_t t) : width(w), height(h), tile(t), tiles_x((w + t - 1) / t), tiles_y((h + t - 1) / t) {}
  int64_t tiles() const { return tiles_x * tiles_y; }
};

// One Gaussian's inputs for a pair, read once per tile visit.
struct Splat {
  float mx, my, a, b, c, opacity;
  const float* color;
};

inline Splat load_splat(const float* means2d, const float* conics, const float* opacities, const float* colors,
                        int64_t channels, int64_t g) {
  return {means2d[2 * g], means2d[2 * g + 1], conics[3 * g], conics[3 * g + 1], conics[3 * g + 2], opacities[g],
          colors + g * channels};
}

// exp(x) for x <= 0 from a degree-5 polynomial on [-ln2/2, ln2/2] and the exponent bits (Cephes' expf
// constants), within 2 ulp of std::exp; unlike std::exp the compiler vectorises it. Inputs below -87 give ~1e-38,
// far under the alpha cutoff.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  x = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * (x * x) + x + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// Alpha of one Gaussian's pairs with the n pixels whose centres are (cx[i], cy[i]), 0 where the pair is not
// composited (sigma < 0 or alpha < 1/255), and exp(-sigma) in vis. Evaluating a whole tile at once, vectorised,
// costs less than a scalar pass over the Gaussian's part of it. Forward and backward both call this, so they agree
// on every pair; the sigma expression keeps torch_rasterizer._pair_alpha's operation order.
inline void tile_alpha(const Splat& s, const float* __restrict cx, const float* __restrict cy, int64_t n,
                       float* __restrict alpha, float* __restrict vis) {
  const float mx = s.mx, my = s.my, a = s.a, b = s.b, c = s.c, opacity = s.opacity;  // loop-invariant locals
  for (int64_t i = 0; i < n; ++i) {
    const float dx = mx - cx[i], dy = my - cy[i];
    const float sigma = 0.5f * (a * dx * dx + c * dy * dy) + b * dx * dy;
    const float v = exp_nonpositive(-sigma);
    const float pair_alpha = std::min(kAlphaMax, opacity * v);
    // Two float selects rather than a && of comparisons: no branch and no bool, so the loop vectorises.
    const float above_cutoff = pair_alpha >= kAlphaMin ? pair_alpha : 0.0f;
    alpha[i] = sigma >= 0.0f ? above_cutoff : 0.0f;
    vis[i] = v;
  }
}

// The tile lists: entries [offsets[t], offsets[t+1]) of `ids` hold tile t's Gaussians in depth order, and
// entries [gaussian_offsets[g], gaussian_offsets[g+1]) of `entries` hold the positions of Gaussian g in `ids`.
std::vector<torch::Tensor> bin(const torch::Tensor& spans, const Grid& grid) {
  const int64_t n = spans.size(0);
  const int32_t* s = spans.data_ptr<int32_t>();
  auto offsets = torch::zeros({grid.tiles() + 1}, torch::kInt64);
  auto gaussian_offsets = torch::zeros({n + 1}, torch::kInt64);
  int64_t* off = offsets.data_ptr<int64_t>();
  int64_t* goff = gaussian_offsets.data_ptr<int64_t>();
  auto tile_box = [&](int64_t g, int64_t& tx0, int64_t& tx1, int64_t& ty0, int64_t& ty1) {
    const int32_t* box = s + 4 * g;
    if (box[1] < box[0] || box[3] < box[2]) return false;
    tx0 = box[0] / grid.tile, tx1 = box[1] / grid.tile, ty0 = box[2] / grid.tile, ty1 = box[3] / grid.tile;
    return true;
  };
  for (int64_t g = 0; g < n; ++g) {
    int64_t tx0, tx1, ty0, ty1;
    goff[g + 1] = goff[g];
    if (!tile_box(g, tx0, tx1, ty0, ty1)) continue;
    for (int64_t ty = ty0; ty <= ty1; ++ty)
      for (int64_t tx = tx0; tx <= tx1; ++tx) ++off[ty * grid.tiles_x + tx + 1];
    goff[g + 1] += (tx1 - tx0 + 1) * (ty1 - ty0 + 1);
  }
  for (int64_t t = 0; t < grid.tiles(); ++t) off[t + 1] += off[t];
  const int64_t total = off[grid.tiles()];
  auto ids = torch::empty({total}, torch::kInt32);
  auto entries = torch::empty({total}, torch::kInt64);
  int32_t* id = ids.data_ptr<int32_t>();
  int64_t* entry = entries.data_ptr<int64_t>();
  std::vector<int64_t> cursor(off, off + grid.tiles());
  for (int64_t g = 0; g < n; ++g) {
    int64_t tx0, tx1, ty0, ty1, k = goff[g];
    if (!tile_box(g, tx0, tx1, ty0, ty1)) continue;
    for (int64_t ty = ty0; ty <= ty1; ++ty)
      for (int64_t tx = tx0; tx <= tx1; ++tx) {
        const int64_t position = cursor[ty * grid.tiles_x + tx]++;
        id[position] = static_cast<int32_t>(g);
        entry[k++] = position;
      }
  }
  return {offsets, ids, gaussian_offsets, entries};
}

struct TileRect {
  int64_t x0, x1, y0, y1;  // half-open pixel rectangle of a tile
  TileRect(const Grid& grid, int64_t t)
      : x0((t % grid.tiles_x) * grid.tile), x1(std::min(grid.width, x0 + grid.tile)),
        y0((t / grid.tiles_x) * grid.tile), y1(std::min(grid.height, y0 + grid.tile)) {}
  int64_t local(int64_t x, int64_t y) const { return (y - y0) * (x1 - x0) + (x - x0); }
  int64_t pixels() const { return (x1 - x0) * (y1 - y0); }
  // Pixel centres in local order, as torch_rasterizer computes them (index + 0.5).
  void centres(float* cx, float* cy) const {
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = x0; x < x1; ++x) {
        cx[local(x, y)] = static_cast<float>(x) + 0.5f;
        cy[local(x, y)] = static_cast<float>(y) + 0.5f;
      }
  }
  // The part of a Gaussian's inclusive span box [x0, x1] x [y0, y1] inside this tile, half-open.
  void clip(const int32_t* box, int64_t& bx0, int64_t& bx1, int64_t& by0, int64_t& by1) const {
    bx0 = std::max<int64_t>(box[0], x0), bx1 = std::min<int64_t>(box[1] + 1, x1);
    by0 = std::max<int64_t>(box[2], y0), by1 = std::min<int64_t>(box[3] + 1, y1);
  }
};

void check_inputs(const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& opacities,
                  const torch::Tensor& colors, const torch::Tensor& spans) {
  for (const auto* t : {&means2d, &conics, &opacities, &colors})
    TORCH_CHECK(t->dtype() == torch::kFloat32 && t->is_contiguous() && t->device().is_cpu(),
                "composite: inputs must be contiguous float32 CPU tensors");
  TORCH_CHECK(spans.dtype() == torch::kInt32 && spans.is_contiguous(), "composite: spans must be contiguous int32");
}

}  // namespace

// Returns image [H*W, D], alpha [H*W], final transmittance [H*W] (float64), the list position where each pixel
// stopped [H*W] (int32), and bin()'s four tensors, which backward takes back.
std::vector<torch::Tensor> composite_forward(const torch::Tensor& means2d, const torch::Tensor& conics,
                                             const torch::Tensor& opacities, const torch::Tensor& colors,
                                             const torch::Tensor& spans, int64_t width, int64_t height, int64_t tile,
                                             int64_t threads) {
  check_inputs(means2d, conics, opacities, colors, spans);
  const Grid grid(width, height, tile);
  const int64_t channels = colors.size(1), pixels = width * height;
  auto bins = bin(spans, grid);
  auto image = torch::zeros({pixels, channels}, torch::kFloat32);
  auto alpha_out = torch::zeros({pixels}, torch::kFloat32);
  auto final_t = torch::ones({pixels}, torch::kFloat64);
  auto stop = torch::empty({pixels}, torch::kInt32);
  const float *m = means2d.data_ptr<float>(), *cn = conics.data_ptr<float>(), *op = opacities.data_ptr<float>(),
              *col = colors.data_ptr<float>();
  const int32_t* box = spans.data_ptr<int32_t>();
  const int64_t* off = bins[0].data_ptr<int64_t>();
  const int32_t* ids = bins[1].data_ptr<int32_t>();
  float *img = image.data_ptr<float>(), *alp = alpha_out.data_ptr<float>();
  double* ft = final_t.data_ptr<double>();
  int32_t* stp = stop.data_ptr<int32_t>();

  parallel_pieces(grid.tiles(), 1, static_cast<int>(threads), [&](int64_t first, int64_t last) {
    const int64_t area = tile * tile;
    std::vector<double> T(area);
    std::vector<int32_t> stopped(area);
    std::vector<float> rgb(area * channels), acc(area), alphas(area), vis(area), cx(area), cy(area);
    for (int64_t t = first; t < last; ++t) {
      const TileRect r(grid, t);
      const int64_t count = off[t + 1] - off[t], n_pixels = r.pixels();
      r.centres(cx.data(), cy.data());
      std::fill(T.begin(), T.end(), 1.0);
      std::fill(stopped.begin(), stopped.end(), static_cast<int32_t>(count));
      std::fill(rgb.begin(), rgb.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      int64_t done = 0;
      for (int64_t k = 0; k < count && done < n_pixels; ++k) {
        const int64_t g = ids[off[t] + k];
        const Splat s = load_splat(m, cn, op, col, channels, g);
        int64_t x0, x1, y0, y1;
        r.clip(box + 4 * g, x0, x1, y0, y1);
        tile_alpha(s, cx.data(), cy.data(), n_pixels, alphas.data(), vis.data());
        for (int64_t y = y0; y < y1; ++y)
          for (int64_t x = x0; x < x1; ++x) {
            const int64_t p = r.local(x, y);
            const float alpha = alphas[p];
            if (alpha == 0.0f || stopped[p] != count) continue;
            const double next = T[p] * (1.0 - static_cast<double>(alpha));
            if (next <= kTransmittanceMin) {
              stopped[p] = static_cast<int32_t>(k);
              ++done;
              continue;
            }
            const float w = alpha * static_cast<float>(T[p]);
            for (int64_t d = 0; d < channels; ++d) rgb[p * channels + d] += w * s.color[d];
            acc[p] += w;
            T[p] = next;
          }
      }
      for (int64_t y = r.y0; y < r.y1; ++y)
        for (int64_t x = r.x0; x < r.x1; ++x) {
          const int64_t p = r.local(x, y), q = y * width + x;
          for (int64_t d = 0; d < channels; ++d) img[q * channels + d] = rgb[p * channels + d];
          alp[q] = acc[p];
          ft[q] = T[p];
          stp[q] = stopped[p];
        }
    }
  });
  return {image, alpha_out, final_t, stop, bins[0], bins[1], bins[2], bins[3]};
}

// Returns the gradients of means2d [M, 2], conics [M, 3], opacities [M], colors [M, D] and the summed absolute
// per-pixel gradients of means2d [M, 2] (gsplat's absgrad).
std::vector<torch::Tensor> composite_backward(const torch::Tensor& means2d, const torch::Tensor& conics,
                                              const torch::Tensor& opacities, const torch::Tensor& colors,
                                              const torch::Tensor& spans, int64_t width, int64_t height, int64_t tile,
                                              int64_t threads, const torch::Tensor& grad_image,
                                              const torch::Tensor& grad_alpha, const torch::Tensor& final_t,
                                              const torch::Tensor& stop, const torch::Tensor& offsets,
                                              const torch::Tensor& ids, const torch::Tensor& gaussian_offsets,
                                              const torch::Tensor& entries) {
  check_inputs(means2d, conics, opacities, colors, spans);
  TORCH_CHECK(grad_image.is_contiguous() && grad_alpha.is_contiguous(), "composite: gradients must be contiguous");
  const Grid grid(width, height, tile);
  const int64_t channels = colors.size(1), n = means2d.size(0), stride = kGeometryGrads + channels;
  const float *m = means2d.data_ptr<float>(), *cn = conics.data_ptr<float>(), *op = opacities.data_ptr<float>(),
              *col = colors.data_ptr<float>(), *g_img = grad_image.data_ptr<float>(),
              *g_alp = grad_alpha.data_ptr<float>();
  const int32_t *box = spans.data_ptr<int32_t>(), *stp = stop.data_ptr<int32_t>(), *id = ids.data_ptr<int32_t>();
  const double* ft = final_t.data_ptr<double>();
  const int64_t *off = offsets.data_ptr<int64_t>(), *goff = gaussian_offsets.data_ptr<int64_t>(),
                *entry = entries.data_ptr<int64_t>();
  // Float per entry (each already summed in double over one tile's pixels) keeps this buffer half the size; a
  // torch tensor so that memory profilers count it. Every entry is written below.
  auto per_entry_tensor = torch::empty({ids.size(0), stride}, torch::kFloat32);
  float* per_entry = per_entry_tensor.data_ptr<float>();

  parallel_pieces(grid.tiles(), 1, static_cast<int>(threads), [&](int64_t first, int64_t last) {
    const int64_t area = tile * tile;
    std::vector<double> T(area), later(area);  // transmittance after the pair, and sum of later weights * dL/dw
    std::vector<int32_t> stopped(area);
    std::vector<double> g(stride);
    std::vector<float> alphas(area), vis(area), cx(area), cy(area);
    for (int64_t t = first; t < last; ++t) {
      const TileRect r(grid, t);
      r.centres(cx.data(), cy.data());
      for (int64_t y = r.y0; y < r.y1; ++y)
        for (int64_t x = r.x0; x < r.x1; ++x) {
          const int64_t p = r.local(x, y), q = y * width + x;
          T[p] = ft[q];
          later[p] = 0.0;
          stopped[p] = stp[q];
        }
      for (int64_t k = off[t + 1] - off[t] - 1; k >= 0; --k) {
        const int64_t gid = id[off[t] + k];
        const Splat s = load_splat(m, cn, op, col, channels, gid);
        int64_t x0, x1, y0, y1;
        r.clip(box + 4 * gid, x0, x1, y0, y1);
        std::fill(g.begin(), g.end(), 0.0);
        tile_alpha(s, cx.data(), cy.data(), r.pixels(), alphas.data(), vis.data());
        for (int64_t y = y0; y < y1; ++y)
          for (int64_t x = x0; x < x1; ++x) {
            const int64_t p = r.local(x, y), q = y * width + x;
            const float alpha = alphas[p];
            if (alpha == 0.0f || k >= stopped[p]) continue;
            const double keep = 1.0 - static_cast<double>(alpha);
            const double before = T[p] / keep;  // transmittance in front of this pair
            const double w = alpha * before;
            double dl_dw = g_alp[q];
            for (int64_t d = 0; d < channels; ++d) {
              g[kGeometryGrads + d] += w * g_img[q * channels + d];
              dl_dw += s.color[d] * static_cast<double>(g_img[q * channels + d]);
            }
            const double dl_dalpha = before * dl_dw - later[p] / keep;
            later[p] += w * dl_dw;
            T[p] = before;
            if (s.opacity * vis[p] > kAlphaMax) continue;  // clamped: alpha does not move with its inputs
            const double dl_dsigma = -alpha * dl_dalpha;
            const double dx = s.mx - cx[p], dy = s.my - cy[p];
            const double gx = dl_dsigma * (s.a * dx + s.b * dy), gy = dl_dsigma * (s.b * dx + s.c * dy);
            g[0] += gx;
            g[1] += gy;
            g[2] += dl_dsigma * 0.5 * dx * dx;
            g[3] += dl_dsigma * dx * dy;
            g[4] += dl_dsigma * 0.5 * dy * dy;
            g[5] += vis[p] * dl_dalpha;
            g[6] += std::abs(gx);
            g[7] += std::abs(gy);
          }
        std::copy(g.begin(), g.end(), per_entry + (off[t] + k) * stride);
      }
    }
  });

  auto grads = torch::empty({n, stride}, torch::kFloat32);
  float* out = grads.data_ptr<float>();
  parallel_pieces(n, 1024, static_cast<int>(threads), [&](int64_t first, int64_t last) {
    std::vector<double> sum(stride);
    for (int64_t gid = first; gid < last; ++gid) {
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int64_t e = goff[gid]; e < goff[gid + 1]; ++e) {
        const float* row = per_entry + entry[e] * stride;
        for (int64_t j = 0; j < stride; ++j) sum[j] += row[j];
      }
      for (int64_t j = 0; j < stride; ++j) out[gid * stride + j] = static_cast<float>(sum[j]);
    }
  });
  auto parts = grads.split_with_sizes({2, 3, 1, 2, channels}, 1);
  return {parts[0].contiguous(), parts[1].contiguous(), parts[2].reshape({n}), parts[4].contiguous(),
          parts[3].contiguous()};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("composite_forward", &composite_forward, "Composite sorted, projected Gaussians (CPU)");
  module.def("composite_backward", &composite_backward, "Gradients of composite_forward (CPU)");
  module.def("project_forward", &project_forward, "EWA projection to one pinhole camera (CPU)");
  module.def("project_backward", &project_backward, "Gradients of project_forward (CPU)");
  module.def("sh_forward", &sh_forward, "Spherical harmonics colours, + 0.5 clamped at 0 (CPU)");
  module.def("sh_backward", &sh_backward, "Gradients of sh_forward (CPU)");
}
