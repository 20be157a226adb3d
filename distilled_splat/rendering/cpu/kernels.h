// The CPU kernels of distilled_splat.rendering.cpp_backend: projection and spherical harmonics (project.cpp),
// compositing (composite.cpp), and the thread pool both use.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

// Calls body(begin, end) on [0, count) split into pieces handed out from a shared counter to `threads` threads.
// Callers write only to the outputs of their own pieces, so results never depend on which thread ran a piece.
template <typename Body>
void parallel_pieces(int64_t count, int64_t piece, int threads, const Body& body) {
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t begin; (begin = next.fetch_add(piece)) < count;) body(begin, std::min(count, begin + piece));
  };
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, (count + piece - 1) / piece)));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& thread : pool) thread.join();
}

std::vector<torch::Tensor> project_forward(const torch::Tensor& means, const torch::Tensor& quats,
                                           const torch::Tensor& scales, const torch::Tensor& viewmat,
                                           const torch::Tensor& K, int64_t width, int64_t height, double eps2d,
                                           double near_plane, double far_plane, int64_t threads);
std::vector<torch::Tensor> project_backward(const torch::Tensor& means, const torch::Tensor& quats,
                                            const torch::Tensor& scales, const torch::Tensor& viewmat,
                                            const torch::Tensor& K, int64_t width, int64_t height, double eps2d,
                                            const torch::Tensor& grad_means2d, const torch::Tensor& grad_depths,
                                            const torch::Tensor& grad_conics, int64_t threads);
torch::Tensor sh_forward(const torch::Tensor& means, const torch::Tensor& coeffs, const torch::Tensor& campos,
                         int64_t degree, int64_t threads);
std::vector<torch::Tensor> sh_backward(const torch::Tensor& means, const torch::Tensor& coeffs,
                                       const torch::Tensor& campos, int64_t degree, const torch::Tensor& grad_colors,
                                       int64_t threads);
