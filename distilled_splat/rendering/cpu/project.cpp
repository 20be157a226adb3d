// EWA projection of 3D Gaussians to one pinhole camera, and their degree <= 3 spherical harmonics colours, on the
// CPU, forward and backward: the same results as gsplat's PyTorch reference (_fully_fused_projection with
// classic rasterisation, _spherical_harmonics + 0.5 clamped at 0), which torch_rasterizer.py calls.
//
// Forwards compute in float32 in the reference's operation order, so that radii (a ceil of a float) come out
// the same; backwards sum in double. Every Gaussian is independent, so threads split them with no shared writes.

#include "kernels.h"

#include <algorithm>
#include <cmath>

namespace {

struct Camera {
  float W[3][3], w[3], K[3][3];
  float lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;
  Camera(const torch::Tensor& viewmat, const torch::Tensor& Ks, int64_t width, int64_t height) {
    auto v = viewmat.accessor<float, 2>();
    auto k = Ks.accessor<float, 2>();
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) W[i][j] = v[i][j], K[i][j] = k[i][j];
      w[i] = v[i][3];
    }
    const float fx = K[0][0], fy = K[1][1], cx = K[0][2], cy = K[1][2];
    const float tan_fovx = 0.5f * width / fx, tan_fovy = 0.5f * height / fy;
    lim_x_pos = (width - cx) / fx + 0.3f * tan_fovx;
    lim_x_neg = cx / fx + 0.3f * tan_fovx;
    lim_y_pos = (height - cy) / fy + 0.3f * tan_fovy;
    lim_y_neg = cy / fy + 0.3f * tan_fovy;
  }
};

// Rotation matrix of a quaternion (w, x, y, z) already normalised.
template <typename T>
void rotation(const T q[4], T R[3][3]) {
  const T w = q[0], x = q[1], y = q[2], z = q[3];
  R[0][0] = 1 - 2 * (y * y + z * z), R[0][1] = 2 * (x * y - w * z), R[0][2] = 2 * (x * z + w * y);
  R[1][0] = 2 * (x * y + w * z), R[1][1] = 1 - 2 * (x * x + z * z), R[1][2] = 2 * (y * z - w * x);
  R[2][0] = 2 * (x * z - w * y), R[2][1] = 2 * (y * z + w * x), R[2][2] = 1 - 2 * (x * x + y * y);
}

// Everything the projection of one Gaussian computes, in T (float forward, double backward).
template <typename T>
struct Projected {
  T qn[4], norm, R[3][3], M[3][3], S[3][3], t[3], Sc[3][3], u, v, tx, ty, J[2][3], C[2][2], det, conic[3];
  bool clamp_x, clamp_y;

  Projected(const float* mean, const float* quat, const float* scale, const Camera& cam) {
    // F.normalize: divide by max(|q|, 1e-12).
    T n2 = 0;
    for (int i = 0; i < 4; ++i) n2 += T(quat[i]) * T(quat[i]);
    norm = std::max(std::sqrt(n2), T(1e-12));
    for (int i = 0; i < 4; ++i) qn[i] = T(quat[i]) / norm;
    rotation(qn, R);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) M[i][j] = R[i][j] * T(scale[j]);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) S[i][j] = M[i][0] * M[j][0] + M[i][1] * M[j][1] + M[i][2] * M[j][2];
    for (int i = 0; i < 3; ++i)
      t[i] = T(cam.W[i][0]) * mean[0] + T(cam.W[i][1]) * mean[1] + T(cam.W[i][2]) * mean[2] + T(cam.w[i]);
    T WS[3][3];
    for (int i = 0; i < 3; ++i)
      for (int k = 0; k < 3; ++k) WS[i][k] = T(cam.W[i][0]) * S[0][k] + T(cam.W[i][1]) * S[1][k] + T(cam.W[i][2]) * S[2][k];
    for (int i = 0; i < 3; ++i)
      for (int l = 0; l < 3; ++l) Sc[i][l] = WS[i][0] * T(cam.W[l][0]) + WS[i][1] * T(cam.W[l][1]) + WS[i][2] * T(cam.W[l][2]);
    const T tz = t[2], fx = cam.K[0][0], fy = cam.K[1][1];
    const T rx = t[0] / tz, ry = t[1] / tz;
    u = std::min(std::max(rx, T(-cam.lim_x_neg)), T(cam.lim_x_pos));
    v = std::min(std::max(ry, T(-cam.lim_y_neg)), T(cam.lim_y_pos));
    // torch.clamp passes the gradient where min <= input <= max.
    clamp_x = !(rx >= T(-cam.lim_x_neg) && rx <= T(cam.lim_x_pos));
    clamp_y = !(ry >= T(-cam.lim_y_neg) && ry <= T(cam.lim_y_pos));
    tx = tz * u, ty = tz * v;
    const T tz2 = tz * tz;
    J[0][0] = fx / tz, J[0][1] = 0, J[0][2] = -fx * tx / tz2;
    J[1][0] = 0, J[1][1] = fy / tz, J[1][2] = -fy * ty / tz2;
    T JS[2][3];
    for (int i = 0; i < 2; ++i)
      for (int k = 0; k < 3; ++k) JS[i][k] = J[i][0] * Sc[0][k] + J[i][1] * Sc[1][k] + J[i][2] * Sc[2][k];
    for (int i = 0; i < 2; ++i)
      for (int l = 0; l < 2; ++l) C[i][l] = JS[i][0] * J[l][0] + JS[i][1] * J[l][1] + JS[i][2] * J[l][2];
  }

  void finish(float eps2d) {
    C[0][0] += T(eps2d), C[1][1] += T(eps2d);
    det = std::max(C[0][0] * C[1][1] - C[0][1] * C[1][0], T(1e-10));
    conic[0] = C[1][1] / det;
    conic[1] = -(C[0][1] + C[1][0]) / T(2) / det;
    conic[2] = C[0][0] / det;
  }
};

}  // namespace

std::vector<torch::Tensor> project_forward(const torch::Tensor& means, const torch::Tensor& quats,
                                           const torch::Tensor& scales, const torch::Tensor& viewmat,
                                           const torch::Tensor& K, int64_t width, int64_t height, double eps2d,
                                           double near_plane, double far_plane, int64_t threads) {
  const int64_t n = means.size(0);
  const Camera cam(viewmat, K, width, height);
  auto radii = torch::zeros({n}, torch::kInt32);
  auto means2d = torch::empty({n, 2}, torch::kFloat32);
  auto depths = torch::empty({n}, torch::kFloat32);
  auto conics = torch::empty({n, 3}, torch::kFloat32);
  const float *m = means.data_ptr<float>(), *q = quats.data_ptr<float>(), *s = scales.data_ptr<float>();
  int32_t* rad = radii.data_ptr<int32_t>();
  float *m2 = means2d.data_ptr<float>(), *dep = depths.data_ptr<float>(), *con = conics.data_ptr<float>();
  parallel_pieces(n, 2048, static_cast<int>(threads), [&](int64_t first, int64_t last) {
    for (int64_t g = first; g < last; ++g) {
      Projected<float> p(m + 3 * g, q + 4 * g, s + 3 * g, cam);
      p.finish(static_cast<float>(eps2d));
      const float tz = p.t[2];
      m2[2 * g] = (cam.K[0][0] * p.t[0] + cam.K[0][1] * p.t[1] + cam.K[0][2] * tz) / tz;
      m2[2 * g + 1] = (cam.K[1][0] * p.t[0] + cam.K[1][1] * p.t[1] + cam.K[1][2] * tz) / tz;
      dep[g] = tz;
      for (int i = 0; i < 3; ++i) con[3 * g + i] = p.conic[i];
      const float b = (p.C[0][0] + p.C[1][1]) / 2.0f;
      const float v1 = b + std::sqrt(std::max(b * b - p.det, 0.01f));
      float radius = std::ceil(3.0f * std::sqrt(v1));
      const bool valid = p.det > 0.0f && tz > static_cast<float>(near_plane) && tz < static_cast<float>(far_plane);
      const bool inside = m2[2 * g] + radius > 0 && m2[2 * g] - radius < width && m2[2 * g + 1] + radius > 0 &&
                          m2[2 * g + 1] - radius < height;
      if (!valid || !inside) radius = 0.0f;
      rad[g] = static_cast<int32_t>(radius);
    }
  });
  return {radii, means2d, depths, conics};
}

std::vector<torch::Tensor> project_backward(const torch::Tensor& means, const torch::Tensor& quats,
                                            const torch::Tensor& scales, const torch::Tensor& viewmat,
                                            const torch::Tensor& K, int64_t width, int64_t height, double eps2d,
                                            const torch::Tensor& grad_means2d, const torch::Tensor& grad_depths,
                                            const torch::Tensor& grad_conics, int64_t threads) {
  const int64_t n = means.size(0);
  const Camera cam(viewmat, K, width, height);
  auto grad_means = torch::empty({n, 3}, torch::kFloat32);
  auto grad_quats = torch::empty({n, 4}, torch::kFloat32);
  auto grad_scales = torch::empty({n, 3}, torch::kFloat32);
  const float *m = means.data_ptr<float>(), *q = quats.data_ptr<float>(), *s = scales.data_ptr<float>();
  const float *gm2 = grad_means2d.data_ptr<float>(), *gdep = grad_depths.data_ptr<float>(),
              *gcon = grad_conics.data_ptr<float>();
  float *out_m = grad_means.data_ptr<float>(), *out_q = grad_quats.data_ptr<float>(),
        *out_s = grad_scales.data_ptr<float>();
  parallel_pieces(n, 2048, static_cast<int>(threads), [&](int64_t first, int64_t last) {
    for (int64_t g = first; g < last; ++g) {
      Projected<double> p(m + 3 * g, q + 4 * g, s + 3 * g, cam);
      const double c00 = p.C[0][0], c01 = p.C[0][1], c10 = p.C[1][0], c11 = p.C[1][1];
      p.finish(static_cast<float>(eps2d));
      const double a00 = p.C[0][0], a11 = p.C[1][1], det = p.det;
      (void)c00, (void)c11;
      // conic = (a11, -(a01 + a10) / 2, a00) / det, det = a00 a11 - a01 a10 (the clamp at 1e-10 stops the gradient).
      const double g0 = gcon[3 * g], g1 = gcon[3 * g + 1], g2 = gcon[3 * g + 2];
      const double dl_ddet = -(g0 * a11 - g1 * (c01 + c10) / 2.0 + g2 * a00) / (det * det);
      const bool det_live = a00 * a11 - c01 * c10 >= 1e-10;
      double gC[2][2];
      gC[0][0] = g2 / det + (det_live ? dl_ddet * a11 : 0.0);
      gC[1][1] = g0 / det + (det_live ? dl_ddet * a00 : 0.0);
      gC[0][1] = -g1 / (2.0 * det) - (det_live ? dl_ddet * c10 : 0.0);
      gC[1][0] = -g1 / (2.0 * det) - (det_live ? dl_ddet * c01 : 0.0);
      // C = J Sc J^T: dSc = J^T gC J, dJ = gC J Sc^T + gC^T J Sc.
      double gSc[3][3], gJ[2][3], JS[2][3];
      for (int i = 0; i < 3; ++i)
        for (int l = 0; l < 3; ++l) {
          gSc[i][l] = 0;
          for (int a = 0; a < 2; ++a)
            for (int b = 0; b < 2; ++b) gSc[i][l] += p.J[a][i] * gC[a][b] * p.J[b][l];
        }
      for (int i = 0; i < 2; ++i)
        for (int k = 0; k < 3; ++k) JS[i][k] = p.J[i][0] * p.Sc[0][k] + p.J[i][1] * p.Sc[1][k] + p.J[i][2] * p.Sc[2][k];
      for (int a = 0; a < 2; ++a)
        for (int k = 0; k < 3; ++k) {
          gJ[a][k] = 0;
          for (int b = 0; b < 2; ++b) {
            // gC[a][b] J[b] Sc^T[.][k] and gC[b][a] (J Sc)[b][k]
            double JScT = p.J[b][0] * p.Sc[k][0] + p.J[b][1] * p.Sc[k][1] + p.J[b][2] * p.Sc[k][2];
            gJ[a][k] += gC[a][b] * JScT + gC[b][a] * JS[b][k];
          }
        }
      // J = [[fx/tz, 0, -fx tx'/tz^2], [0, fy/tz, -fy ty'/tz^2]], tx' = tz clamp(tx/tz), ty' likewise.
      const double tz = p.t[2], fx = cam.K[0][0], fy = cam.K[1][1], tz2 = tz * tz, tz3 = tz2 * tz;
      double gt[3] = {0, 0, 0};
      gt[2] += gJ[0][0] * (-fx / tz2) + gJ[0][2] * (2.0 * fx * p.tx / tz3) + gJ[1][1] * (-fy / tz2) +
               gJ[1][2] * (2.0 * fy * p.ty / tz3);
      const double g_tx = gJ[0][2] * (-fx / tz2), g_ty = gJ[1][2] * (-fy / tz2);
      // tx' = tz u with u = clamp(tx / tz), as autograd sees it.
      gt[2] += g_tx * p.u + g_ty * p.v;
      const double g_u = p.clamp_x ? 0.0 : g_tx * tz, g_v = p.clamp_y ? 0.0 : g_ty * tz;
      gt[0] += g_u / tz, gt[2] -= g_u * p.t[0] / tz2;
      gt[1] += g_v / tz, gt[2] -= g_v * p.t[1] / tz2;
      // means2d = (K[0] . t, K[1] . t) / tz; depths = tz.
      for (int r = 0; r < 2; ++r) {
        const double gr = gm2[2 * g + r];
        const double num = cam.K[r][0] * p.t[0] + cam.K[r][1] * p.t[1] + cam.K[r][2] * tz;
        gt[0] += gr * cam.K[r][0] / tz, gt[1] += gr * cam.K[r][1] / tz;
        gt[2] += gr * (cam.K[r][2] / tz - num / tz2);
      }
      gt[2] += gdep[g];
      // t = W mean + w; Sc = W S W^T.
      for (int j = 0; j < 3; ++j)
        out_m[3 * g + j] = static_cast<float>(cam.W[0][j] * gt[0] + cam.W[1][j] * gt[1] + cam.W[2][j] * gt[2]);
      double gS[3][3];
      for (int j = 0; j < 3; ++j)
        for (int k = 0; k < 3; ++k) {
          gS[j][k] = 0;
          for (int i = 0; i < 3; ++i)
            for (int l = 0; l < 3; ++l) gS[j][k] += cam.W[i][j] * gSc[i][l] * cam.W[l][k];
        }
      // S = M M^T: dM = (gS + gS^T) M; M = R diag(scale).
      double gR[3][3], gscale[3] = {0, 0, 0};
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
          double gM = 0;
          for (int k = 0; k < 3; ++k) gM += (gS[i][k] + gS[k][i]) * p.M[k][j];
          gR[i][j] = gM * s[3 * g + j];
          gscale[j] += gM * p.R[i][j];
        }
      for (int j = 0; j < 3; ++j) out_s[3 * g + j] = static_cast<float>(gscale[j]);
      const double w = p.qn[0], x = p.qn[1], y = p.qn[2], z = p.qn[3];
      double gq[4];
      gq[0] = 2 * (-z * gR[0][1] + y * gR[0][2] + z * gR[1][0] - x * gR[1][2] - y * gR[2][0] + x * gR[2][1]);
      gq[1] = 2 * (y * gR[0][1] + z * gR[0][2] + y * gR[1][0] - 2 * x * gR[1][1] - w * gR[1][2] + z * gR[2][0] +
                   w * gR[2][1] - 2 * x * gR[2][2]);
      gq[2] = 2 * (-2 * y * gR[0][0] + x * gR[0][1] + w * gR[0][2] + x * gR[1][0] + z * gR[1][2] - w * gR[2][0] +
                   z * gR[2][1] - 2 * y * gR[2][2]);
      gq[3] = 2 * (-2 * z * gR[0][0] - w * gR[0][1] + x * gR[0][2] + w * gR[1][0] - 2 * z * gR[1][1] + y * gR[1][2] +
                   x * gR[2][0] + y * gR[2][1]);
      // qn = q / max(|q|, 1e-12).
      const double dot = w * gq[0] + x * gq[1] + y * gq[2] + z * gq[3];
      const bool norm_live = p.norm > 1e-12;
      for (int i = 0; i < 4; ++i)
        out_q[4 * g + i] = static_cast<float>((gq[i] - (norm_live ? p.qn[i] * dot : 0.0)) / p.norm);
    }
  });
  return {grad_means, grad_quats, grad_scales};
}

namespace {

// gsplat's degree <= 3 real SH bases at a unit direction (Sloan's form, same constants), and their gradients.
template <typename T>
void sh_bases(int bases, T x, T y, T z, T* b, T (*d)[3]) {
  auto set = [&](int k, T value, T dx, T dy, T dz) {
    b[k] = value;
    if (d) d[k][0] = dx, d[k][1] = dy, d[k][2] = dz;
  };
  set(0, T(0.2820947917738781), 0, 0, 0);
  if (bases <= 1) return;
  const T a1 = T(-0.48860251190292);
  set(1, a1 * y, 0, a1, 0);
  set(2, -a1 * z, 0, 0, -a1);
  set(3, a1 * x, a1, 0, 0);
  if (bases <= 4) return;
  const T z2 = z * z, b2 = T(-1.092548430592079), a2 = T(0.5462742152960395);
  const T c1 = x * x - y * y, s1 = 2 * x * y;
  set(4, a2 * s1, 2 * a2 * y, 2 * a2 * x, 0);
  set(5, b2 * z * y, 0, b2 * z, b2 * y);
  set(6, T(0.9461746957575601) * z2 - T(0.3153915652525201), 0, 0, 2 * T(0.9461746957575601) * z);
  set(7, b2 * z * x, b2 * z, 0, b2 * x);
  set(8, a2 * c1, 2 * a2 * x, -2 * a2 * y, 0);
  if (bases <= 9) return;
  const T c3 = T(-2.285228997322329) * z2 + T(0.4570457994644658), dc3 = 2 * T(-2.285228997322329) * z;
  const T b3 = T(1.445305721320277), a3 = T(-0.5900435899266435);
  const T c2 = x * c1 - y * s1, s2 = x * s1 + y * c1;
  set(9, a3 * s2, a3 * 6 * x * y, a3 * (3 * x * x - 3 * y * y), 0);
  set(10, b3 * z * s1, b3 * z * 2 * y, b3 * z * 2 * x, b3 * s1);
  set(11, c3 * y, 0, c3, dc3 * y);
  set(12, z * (T(1.865881662950577) * z2 - T(1.119528997770346)), 0, 0,
      3 * T(1.865881662950577) * z2 - T(1.119528997770346));
  set(13, c3 * x, c3, 0, dc3 * x);
  set(14, b3 * z * c1, b3 * z * 2 * x, -b3 * z * 2 * y, b3 * c1);
  set(15, a3 * c2, a3 * (3 * x * x - 3 * y * y), -a3 * 6 * x * y, 0);
}

}  // namespace

// colors [N, 3] = max(sum_k basis_k(normalise(mean - campos)) coeffs[:, k] + 0.5, 0) over the first
// (degree + 1)^2 bases; coeffs [N, K, 3].
torch::Tensor sh_forward(const torch::Tensor& means, const torch::Tensor& coeffs, const torch::Tensor& campos,
                         int64_t degree, int64_t threads) {
  const int64_t n = means.size(0), k_all = coeffs.size(1), bases = (degree + 1) * (degree + 1);
  TORCH_CHECK(bases <= k_all && degree <= 3, "sh: degree must be <= 3 and within the coefficients");
  auto colors = torch::empty({n, 3}, torch::kFloat32);
  const float *m = means.data_ptr<float>(), *c = coeffs.data_ptr<float>(), *cam = campos.data_ptr<float>();
  float* out = colors.data_ptr<float>();
  parallel_pieces(n, 2048, static_cast<int>(threads), [&](int64_t first, int64_t last) {
    float b[16];
    for (int64_t g = first; g < last; ++g) {
      const float vx = m[3 * g] - cam[0], vy = m[3 * g + 1] - cam[1], vz = m[3 * g + 2] - cam[2];
      const float norm = std::max(std::sqrt(vx * vx + vy * vy + vz * vz), 1e-12f);
      sh_bases<float>(static_cast<int>(bases), vx / norm, vy / norm, vz / norm, b, nullptr);
      for (int ch = 0; ch < 3; ++ch) {
        float sum = 0.0f;
        for (int64_t k = 0; k < bases; ++k) sum += b[k] * c[(g * k_all + k) * 3 + ch];
        out[3 * g + ch] = std::max(sum + 0.5f, 0.0f);
      }
    }
  });
  return colors;
}

// Returns the gradients of means [N, 3] (through the view direction) and coeffs [N, K, 3].
std::vector<torch::Tensor> sh_backward(const torch::Tensor& means, const torch::Tensor& coeffs,
                                       const torch::Tensor& campos, int64_t degree, const torch::Tensor& grad_colors,
                                       int64_t threads) {
  const int64_t n = means.size(0), k_all = coeffs.size(1), bases = (degree + 1) * (degree + 1);
  auto grad_means = torch::empty({n, 3}, torch::kFloat32);
  auto grad_coeffs = torch::zeros({n, k_all, 3}, torch::kFloat32);
  const float *m = means.data_ptr<float>(), *c = coeffs.data_ptr<float>(), *cam = campos.data_ptr<float>(),
              *gc = grad_colors.data_ptr<float>();
  float *out_m = grad_means.data_ptr<float>(), *out_c = grad_coeffs.data_ptr<float>();
  parallel_pieces(n, 2048, static_cast<int>(threads), [&](int64_t first, int64_t last) {
    float bf[16];
    double b[16], d[16][3];
    for (int64_t g = first; g < last; ++g) {
      const float vx = m[3 * g] - cam[0], vy = m[3 * g + 1] - cam[1], vz = m[3 * g + 2] - cam[2];
      const float norm = std::max(std::sqrt(vx * vx + vy * vy + vz * vz), 1e-12f);
      const double x = vx / norm, y = vy / norm, z = vz / norm;
      sh_bases<float>(static_cast<int>(bases), vx / norm, vy / norm, vz / norm, bf, nullptr);
      sh_bases<double>(static_cast<int>(bases), x, y, z, b, d);
      double g_dir[3] = {0, 0, 0};
      for (int ch = 0; ch < 3; ++ch) {
        float sum = 0.0f;  // the forward's sum, for clamp_min's mask (it passes where sum + 0.5 >= 0)
        for (int64_t k = 0; k < bases; ++k) sum += bf[k] * c[(g * k_all + k) * 3 + ch];
        if (!(sum + 0.5f >= 0.0f)) continue;
        const double gr = gc[3 * g + ch];
        for (int64_t k = 0; k < bases; ++k) {
          out_c[(g * k_all + k) * 3 + ch] = static_cast<float>(b[k] * gr);
          const double coeff = c[(g * k_all + k) * 3 + ch] * gr;
          for (int i = 0; i < 3; ++i) g_dir[i] += coeff * d[k][i];
        }
      }
      // dir = v / max(|v|, 1e-12): dv = (g_dir - dir (dir . g_dir)) / |v|.
      const double dot = x * g_dir[0] + y * g_dir[1] + z * g_dir[2];
      const bool live = norm > 1e-12f;
      out_m[3 * g] = static_cast<float>((g_dir[0] - (live ? x * dot : 0.0)) / norm);
      out_m[3 * g + 1] = static_cast<float>((g_dir[1] - (live ? y * dot : 0.0)) / norm);
      out_m[3 * g + 2] = static_cast<float>((g_dir[2] - (live ? z * dot : 0.0)) / norm);
    }
  });
  return {grad_means, grad_coeffs};
}
