// safetensors (https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian
// header size N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, optional
// "__metadata__"}, then the byte buffer the offsets index. The reader refuses truncated or
// inconsistent files (offsets outside the buffer, sizes that do not match dtype x shape,
// overlaps or holes, a header longer than the file) with a one-line reason. Plain C++17, no
// torch: asymvq-run uses it in front of the C API.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace asymvq::st {

struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct NotFound : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Tensor {
  std::string name;
  std::string dtype;  // as stored: F32, F16, BF16, F64, I64, I32
  std::vector<int64_t> shape;
  std::vector<float> f32;    // float dtypes, converted to float32
  std::vector<int64_t> i64;  // integer dtypes, widened to int64
  bool is_int() const { return dtype == "I64" || dtype == "I32"; }
};

// Every tensor of the file, in header order.
std::vector<Tensor> read(const std::string& path);
// The single tensor of a file that must hold exactly one (any key).
Tensor read_one(const std::string& path, const std::string& arg);
// One float32 tensor under `name`.
void write_f32(const std::string& path, const std::string& name, const std::vector<int64_t>& shape, const float* data);

}  // namespace asymvq::st
