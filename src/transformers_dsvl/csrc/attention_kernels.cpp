// Attention kernels for the vision towers' float32 CPU inference (compiled on demand by
// transformers_dsvl/cpu_kernels.py).
//
// attention: softmax(scale * q.k^T) v for small (sample, head) pairs (SigLIP), each pair's products through torch's
// batch-reduce GEMM (oneDNN's AVX-512 micro-kernels where available; torch's batched products on CPU go through MKL,
// which runs AVX2 code on AMD) and its scores kept in a per-thread buffer between them. The softmax's normalization
// is applied to the product with v (head_dim values per query instead of one per key).
//
// window_attention: SAM's attention blocks from the unpadded q, k and v maps to the cropped output map. Each
// (sample, window, head) task gathers its window (tokens past the map's edge get the qkv bias, which is what the
// original's zero-padded tokens get from the projection), computes its relative-position terms as one product with
// the flipped tables, then attends as `attention` does, with the terms added in the softmax's first pass (the dense
// bias is never written), and writes the window's real tokens back. A global block is one window covering the grid,
// attended a block of query rows at a time.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;

// window_attention's blocking (see there): windows up to this many tokens are attended in one piece (SAM-B's 14 x 14
// windows); longer ones a block of query rows and of keys at a time.
constexpr int64_t kWholeWindowTokens = 1024;
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 512;

void check_operand(const torch::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu() && tensor.scalar_type() == torch::kFloat32 && tensor.dim() == 3, name,
              " must be a 3-d float32 CPU tensor, got shape ", tensor.sizes(), ", ", tensor.scalar_type(), " on ",
              tensor.device());
  TORCH_CHECK(tensor.size(2) <= 1 || tensor.stride(2) == 1, name, " must be contiguous in its last dimension");
}

float reduce_max(Vec values) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, values);
}

// Scales a row of height x width scores, adds the bias and returns the row's max. The bias is rel_h + rel_w first,
// then added to the score, as the original adds its dense bias. A segment's last partial vector (all of it at
// SAM-B's 14-wide windows) is done with masked loads and stores: scalar, this pass took a third of a window block.
float scale_add_bias(float* row, float scale, const float* rel_h, const float* rel_w, int64_t height, int64_t width) {
  const Vec vector_scale(scale), lowest(-std::numeric_limits<float>::infinity());
  Vec vector_max = lowest;
  for (int64_t i = 0; i < height; ++i) {
    float* segment = row + i * width;
    const Vec row_term(rel_h[i]);
    int64_t j = 0;
    for (; j + Vec::size() <= width; j += Vec::size()) {
      const Vec biased = Vec::loadu(segment + j) * vector_scale + (row_term + Vec::loadu(rel_w + j));
      biased.store(segment + j);
      vector_max = at::vec::maximum(vector_max, biased);
    }
    if (j < width) {
      const int64_t rest = width - j;
      const Vec biased = Vec::loadu(segment + j, rest) * vector_scale + (row_term + Vec::loadu(rel_w + j, rest));
      biased.store(segment + j, rest);
      vector_max = at::vec::maximum(vector_max, Vec::set(lowest, biased, rest));
    }
  }
  return reduce_max(vector_max);
}

// Scales a row (a multiplication by 1 leaves it as it is) and returns its max.
float scale_row(float* row, float scale, int64_t length) {
  const Vec vector_scale(scale);
  Vec vector_max(-std::numeric_limits<float>::infinity());
  float max = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + Vec::size() <= length; j += Vec::size()) {
    const Vec scaled = Vec::loadu(row + j) * vector_scale;
    scaled.store(row + j);
    vector_max = at::vec::maximum(vector_max, scaled);
  }
  for (; j < length; ++j) {
    row[j] *= scale;
    max = std::max(max, row[j]);
  }
  return std::max(max, reduce_max(vector_max));
}

// Exponentiates a row minus its max in place and returns 1 / (the row's sum). The caller scales the row's product
// with v by it: head_dim multiplications instead of a pass over every score.
float exponentiate(float* row, int64_t length, float max) {
  const Vec vector_max(max);
  Vec vector_sum(0.f);
  float sum = 0.f;
  int64_t j = 0;
  for (; j + Vec::size() <= length; j += Vec::size()) {
    const Vec exponential = (Vec::loadu(row + j) - vector_max).exp_u20();
    exponential.store(row + j);
    vector_sum = vector_sum + exponential;
  }
  for (; j < length; ++j) {
    row[j] = std::exp(row[j] - max);
    sum += row[j];
  }
  sum += at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, vector_sum);
  return 1.f / sum;
}

// rows[i, :length] *= factors[i] for `count` rows `stride` apart.
void scale_rows(float* rows, int64_t count, int64_t stride, int64_t length, const float* factors) {
  for (int64_t i = 0; i < count; ++i) {
    float* row = rows + i * stride;
    const Vec factor(factors[i]);
    int64_t j = 0;
    for (; j + Vec::size() <= length; j += Vec::size()) (Vec::loadu(row + j) * factor).store(row + j);
    for (; j < length; ++j) row[j] *= factors[i];
  }
}

}  // namespace

void check_attention_operand(const torch::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu() && tensor.scalar_type() == torch::kFloat32 && tensor.dim() == 4, name,
              " must be a 4-d float32 CPU tensor, got shape ", tensor.sizes(), ", ", tensor.scalar_type(), " on ",
              tensor.device());
  TORCH_CHECK(tensor.stride(3) == 1, name, " must be contiguous in its last dimension");
}

// output[n, i, h, :] = sum over j of softmax_j(scale * query[n, h, i] . key[n, h, j]) value[n, h, j, :], for query,
// key, value [N, heads, tokens, head_dim] and output [N, tokens, heads, head_dim], any strides but the last.
torch::Tensor attention(torch::Tensor query, torch::Tensor key, torch::Tensor value, double scaling) {
  check_attention_operand(query, "query");
  check_attention_operand(key, "key");
  check_attention_operand(value, "value");
  const int64_t batch = query.size(0), heads = query.size(1), queries = query.size(2), head_dim = query.size(3);
  const int64_t keys = key.size(2);
  TORCH_CHECK(key.size(0) == batch && key.size(1) == heads && key.size(3) == head_dim && value.sizes() == key.sizes(),
              "key ", key.sizes(), " and value ", value.sizes(), " must match query ", query.sizes(),
              " but for the number of keys");
  torch::Tensor output = torch::empty({batch, queries, heads, head_dim}, query.options());
  const float scale = static_cast<float>(scaling);
  const float* q_data = query.data_ptr<float>();
  const float* k_data = key.data_ptr<float>();
  const float* v_data = value.data_ptr<float>();
  float* out_data = output.data_ptr<float>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(queries * keys), key_t(head_dim * keys), inverse_sums(queries);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / heads, h = task % heads;
      const float* q = q_data + n * query.stride(0) + h * query.stride(1);
      const float* k = k_data + n * key.stride(0) + h * key.stride(1);
      const float* v = v_data + n * value.stride(0) + h * value.stride(1);
      // The GEMM's right-hand side is row-major K x N: the keys transposed.
      at::vec::transpose_mxn<float>(k, key.stride(2), key_t.data(), keys, keys, head_dim);
      at::native::cpublas::brgemm(queries, keys, head_dim, query.stride(2), keys, keys, false, q, key_t.data(),
                                  scores.data(), false);
      for (int64_t i = 0; i < queries; ++i) {
        float* row = scores.data() + i * keys;
        inverse_sums[i] = exponentiate(row, keys, scale_row(row, scale, keys));
      }
      float* attended = out_data + n * output.stride(0) + h * output.stride(2);
      at::native::cpublas::brgemm(queries, head_dim, keys, keys, value.stride(2), output.stride(1), false,
                                  scores.data(), v, attended, false);
      scale_rows(attended, queries, output.stride(1), head_dim, inverse_sums.data());
    }
    at::native::cpublas::brgemm_release(false);
  });
  return output;
}

void check_map(const torch::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu() && tensor.scalar_type() == torch::kFloat32 && tensor.dim() == 4, name,
              " must be a 4-d float32 CPU map [B, height, width, channels], got shape ", tensor.sizes(), ", ",
              tensor.scalar_type(), " on ", tensor.device());
  TORCH_CHECK(tensor.stride(3) == 1, name, " must be contiguous in its channels");
}

// Copies `length` floats (zeros for no source). Inline vector copies: a call of memmove per 64-float head slice of a
// token took a third of a window block's time.
void copy_or_zero(const float* source, int64_t length, float* target) {
  int64_t j = 0;
  for (; j + Vec::size() <= length; j += Vec::size())
    (source != nullptr ? Vec::loadu(source + j) : Vec(0.f)).store(target + j);
  if (j < length)
    (source != nullptr ? Vec::loadu(source + j, length - j) : Vec(0.f)).store(target + j, length - j);
}

// query, key, value: [B, height, width, heads * head_dim] maps (the real tokens only); *_bias: [heads * head_dim]
// or none (zeros), what a padded token gets; tables_t: [head_dim, 2 * (2 * window - 1)], the transposed
// `flipped_relative_tables` (height table, then width table). Returns the cropped output map [B, height, width,
// heads * head_dim].
torch::Tensor window_attention(torch::Tensor query, torch::Tensor key, torch::Tensor value,
                               c10::optional<torch::Tensor> query_bias, c10::optional<torch::Tensor> key_bias,
                               c10::optional<torch::Tensor> value_bias, torch::Tensor tables_t, int64_t window,
                               int64_t heads, double scaling) {
  check_map(query, "query");
  check_map(key, "key");
  check_map(value, "value");
  TORCH_CHECK(key.sizes() == query.sizes() && value.sizes() == query.sizes(), "query ", query.sizes(), ", key ",
              key.sizes(), " and value ", value.sizes(), " must have one shape");
  TORCH_CHECK(window > 0 && heads > 0 && query.size(3) % heads == 0, "window ", window, " and heads ", heads,
              " must be positive, heads dividing the ", query.size(3), " channels");
  const int64_t batch = query.size(0), height = query.size(1), width = query.size(2), channels = query.size(3);
  const int64_t head_dim = channels / heads, span = 2 * window - 1, tokens = window * window;
  TORCH_CHECK(tables_t.device().is_cpu() && tables_t.scalar_type() == torch::kFloat32 && tables_t.dim() == 2 &&
                  tables_t.size(0) == head_dim && tables_t.size(1) == 2 * span && tables_t.is_contiguous(),
              "tables_t must be a contiguous float32 CPU [", head_dim, ", ", 2 * span, "] tensor, got ",
              tables_t.sizes());
  const float* biases[3] = {nullptr, nullptr, nullptr};
  const c10::optional<torch::Tensor>* given[3] = {&query_bias, &key_bias, &value_bias};
  for (int b = 0; b < 3; ++b) {
    if (given[b]->has_value()) {
      const torch::Tensor& bias = **given[b];
      TORCH_CHECK(bias.device().is_cpu() && bias.scalar_type() == torch::kFloat32 && bias.dim() == 1 &&
                      bias.size(0) == channels && bias.stride(0) == 1,
                  "the biases must be contiguous float32 CPU vectors of the ", channels, " channels, got ",
                  bias.sizes());
      biases[b] = bias.data_ptr<float>();
    }
  }
  const int64_t rows = (height + window - 1) / window, cols = (width + window - 1) / window;
  torch::Tensor output = torch::empty({batch, height, width, channels}, query.options());
  const float scale = static_cast<float>(scaling);
  const float* maps[3] = {query.data_ptr<float>(), key.data_ptr<float>(), value.data_ptr<float>()};
  // Read once: Tensor::stride() is an out-of-line call, and the gathers below need three per token and map.
  const int64_t strides[3][3] = {{query.stride(0), query.stride(1), query.stride(2)},
                                 {key.stride(0), key.stride(1), key.stride(2)},
                                 {value.stride(0), value.stride(1), value.stride(2)}};
  const int64_t out_strides[3] = {output.stride(0), output.stride(1), output.stride(2)};
  const float* tables = tables_t.data_ptr<float>();
  float* out_data = output.data_ptr<float>();
  // Long windows are attended a block of query rows at a time, their scores (64 x 4096 floats at SAM-B's global
  // blocks) staying in the core's L2 between the products; the products run over blocks of keys, the size that
  // the batch-reduce GEMM runs fastest at (385-435 against 280 GFLOP/s with all 4096 keys in one call).
  const int64_t query_block = tokens <= kWholeWindowTokens ? tokens : kQueryBlock;
  const int64_t key_block = tokens <= kWholeWindowTokens ? tokens : kKeyBlock;
  at::parallel_for(0, batch * rows * cols * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(tokens * head_dim), k(tokens * head_dim), key_t(head_dim * tokens), v(tokens * head_dim);
    std::vector<float> terms(query_block * 2 * span), scores(query_block * tokens), attended(tokens * head_dim);
    std::vector<float> inverse_sums(query_block);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task % heads, window_index = task / heads;
      const int64_t n = window_index / (rows * cols), top = (window_index / cols) % rows * window;
      const int64_t left = window_index % cols * window;
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t y = top + t / window, x = left + t % window;
        const bool inside = y < height && x < width;
        const float* sources[3];
        for (int m = 0; m < 3; ++m) {
          const int64_t* stride = strides[m];
          sources[m] = inside ? maps[m] + n * stride[0] + y * stride[1] + x * stride[2] : biases[m];
          if (sources[m] != nullptr) sources[m] += h * head_dim;
        }
        copy_or_zero(sources[0], head_dim, q.data() + t * head_dim);
        copy_or_zero(sources[1], head_dim, k.data() + t * head_dim);
        copy_or_zero(sources[2], head_dim, v.data() + t * head_dim);
      }
      at::vec::transpose_mxn<float>(k.data(), head_dim, key_t.data(), tokens, tokens, head_dim);
      for (int64_t first = 0; first < tokens; first += query_block) {
        const int64_t count = std::min(query_block, tokens - first);
        const float* q_block = q.data() + first * head_dim;
        at::native::cpublas::brgemm(count, 2 * span, head_dim, head_dim, 2 * span, 2 * span, false, q_block, tables,
                                    terms.data(), false);
        for (int64_t first_key = 0; first_key < tokens; first_key += key_block)
          at::native::cpublas::brgemm(count, std::min(key_block, tokens - first_key), head_dim, head_dim, tokens, tokens,
                                      false, q_block, key_t.data() + first_key, scores.data() + first_key, false);
        for (int64_t i = 0; i < count; ++i) {
          // The query's terms with key row k and column k: product columns (window - 1 - its row) + k of the height
          // table and (2 window - 1) + (window - 1 - its column) + k of the width table.
          const int64_t t = first + i;
          const float* term = terms.data() + i * 2 * span;
          float* row = scores.data() + i * tokens;
          const float max = scale_add_bias(row, scale, term + window - 1 - t / window,
                                           term + span + window - 1 - t % window, window, window);
          inverse_sums[i] = exponentiate(row, tokens, max);
        }
        for (int64_t first_key = 0; first_key < tokens; first_key += key_block)
          at::native::cpublas::brgemm(count, head_dim, std::min(key_block, tokens - first_key), tokens, head_dim,
                                      head_dim, first_key > 0, scores.data() + first_key,
                                      v.data() + first_key * head_dim, attended.data() + first * head_dim, false);
        scale_rows(attended.data() + first * head_dim, count, head_dim, head_dim, inverse_sums.data());
      }
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t y = top + t / window, x = left + t % window;
        if (y >= height || x >= width) continue;
        float* target = out_data + n * out_strides[0] + y * out_strides[1] + x * out_strides[2] + h * head_dim;
        copy_or_zero(attended.data() + t * head_dim, head_dim, target);
      }
    }
    at::native::cpublas::brgemm_release(false);
  });
  return output;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("window_attention", &window_attention, "SAM window attention from the unpadded maps to the cropped map",
             pybind11::arg("query"), pybind11::arg("key"), pybind11::arg("value"), pybind11::arg("query_bias"),
             pybind11::arg("key_bias"), pybind11::arg("value_bias"), pybind11::arg("tables_t"),
             pybind11::arg("window"), pybind11::arg("heads"), pybind11::arg("scaling"));
  module.def("attention", &attention, "softmax(scale q.k^T) v per (sample, head)", pybind11::arg("query"),
             pybind11::arg("key"), pybind11::arg("value"), pybind11::arg("scaling"));
}
