#include "safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "json.h"

namespace asymvq::st {

namespace {

size_t dtype_size(const std::string& d) {
  if (d == "F32" || d == "I32") return 4;
  if (d == "F16" || d == "BF16") return 2;
  if (d == "F64" || d == "I64") return 8;
  return 0;
}

float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) {
        man <<= 1;
        --exp;
      }
      man &= 0x3FF;
      bits = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

template <class T>
T load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // the format is little-endian, as is every host we build for
  return v;
}

}  // namespace

std::vector<Tensor> read(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) throw NotFound(path + ": no such file");
    throw std::runtime_error(path + ": cannot be read");
  }
  const auto size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  if (size < 8) throw FormatError(path + ": not a safetensors file (" + std::to_string(size) + " bytes, shorter than the 8-byte header size)");
  unsigned char head[8];
  f.read(reinterpret_cast<char*>(head), 8);
  uint64_t n = load<uint64_t>(head);
  if (n > size - 8)
    throw FormatError(path + ": truncated or not safetensors (header says " + std::to_string(n) + " bytes of JSON, the file has " +
                      std::to_string(size - 8) + " after the size)");
  if (n > (uint64_t(100) << 20)) throw FormatError(path + ": header of " + std::to_string(n) + " bytes (over 100 MB) refused");
  std::string header(static_cast<size_t>(n), '\0');
  f.read(header.data(), static_cast<std::streamsize>(n));
  json::Value h;
  try {
    h = json::parse(header);
  } catch (const json::ParseError& e) {
    throw FormatError(path + ": header is not valid JSON (" + e.what() + ")");
  }
  if (!h.is_object()) throw FormatError(path + ": header is not a JSON object");
  const uint64_t buffer = size - 8 - n;
  std::vector<Tensor> out;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (auto& [name, v] : h.obj) {
    if (name == "__metadata__") continue;
    const json::Value* dt = v.find("dtype");
    const json::Value* shape = v.find("shape");
    const json::Value* offs = v.find("data_offsets");
    if (!dt || !dt->is_string() || !shape || !shape->is_array() || !offs || !offs->is_array() || offs->arr.size() != 2)
      throw FormatError(path + ": tensor '" + name + "' needs dtype, shape and data_offsets [begin, end]");
    Tensor t;
    t.name = name;
    t.dtype = dt->str;
    size_t es = dtype_size(t.dtype);
    if (!es) throw FormatError(path + ": tensor '" + name + "' has dtype " + t.dtype + " (this reader takes F32, F16, BF16, F64, I64, I32)");
    uint64_t numel = 1;
    for (auto& d : shape->arr) {
      if (!d.is_number() || !d.is_int || d.i < 0) throw FormatError(path + ": tensor '" + name + "' has a bad shape");
      if (d.i && numel > std::numeric_limits<uint64_t>::max() / 16 / static_cast<uint64_t>(d.i))
        throw FormatError(path + ": tensor '" + name + "' is too large");
      numel *= static_cast<uint64_t>(d.i);
      t.shape.push_back(d.i);
    }
    for (auto& o : offs->arr)
      if (!o.is_number() || !o.is_int || o.i < 0) throw FormatError(path + ": tensor '" + name + "' has bad data_offsets");
    uint64_t b = static_cast<uint64_t>(offs->arr[0].i), e = static_cast<uint64_t>(offs->arr[1].i);
    if (b > e || e > buffer)
      throw FormatError(path + ": tensor '" + name + "' data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                        "] run past the data (" + std::to_string(buffer) + " bytes): truncated file?");
    if (e - b != numel * es)
      throw FormatError(path + ": tensor '" + name + "' has " + std::to_string(e - b) + " bytes, its dtype and shape need " +
                        std::to_string(numel * es));
    spans.emplace_back(b, e);
    std::vector<unsigned char> raw(static_cast<size_t>(e - b));
    f.seekg(static_cast<std::streamoff>(8 + n + b));
    f.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
    if (static_cast<uint64_t>(f.gcount()) != e - b) throw FormatError(path + ": short read of tensor '" + name + "'");
    const unsigned char* p = raw.data();
    if (t.dtype == "F32") {
      t.f32.resize(numel);
      if (numel) std::memcpy(t.f32.data(), p, numel * 4);
    } else if (t.dtype == "F64") {
      for (uint64_t i = 0; i < numel; ++i) t.f32.push_back(static_cast<float>(load<double>(p + 8 * i)));
    } else if (t.dtype == "F16") {
      for (uint64_t i = 0; i < numel; ++i) t.f32.push_back(half_to_float(load<uint16_t>(p + 2 * i)));
    } else if (t.dtype == "BF16") {
      for (uint64_t i = 0; i < numel; ++i) {
        uint32_t bits = uint32_t(load<uint16_t>(p + 2 * i)) << 16;
        float x;
        std::memcpy(&x, &bits, 4);
        t.f32.push_back(x);
      }
    } else if (t.dtype == "I64") {
      t.i64.resize(numel);
      if (numel) std::memcpy(t.i64.data(), p, numel * 8);
    } else {
      for (uint64_t i = 0; i < numel; ++i) t.i64.push_back(load<int32_t>(p + 4 * i));
    }
    out.push_back(std::move(t));
  }
  std::sort(spans.begin(), spans.end());
  uint64_t at = 0;
  for (auto& [b, e] : spans) {
    if (b != at) throw FormatError(path + ": tensor data overlaps or leaves a hole at byte " + std::to_string(std::min(b, at)));
    at = e;
  }
  if (at != buffer)
    throw FormatError(path + ": " + std::to_string(buffer - at) + " bytes after the last tensor (inconsistent header)");
  return out;
}

Tensor read_one(const std::string& path, const std::string& arg) {
  std::vector<Tensor> all = read(path);
  if (all.size() != 1)
    throw FormatError(arg + ": expected a safetensors file holding one tensor, got " + std::to_string(all.size()) + " in " + path);
  return std::move(all[0]);
}

void write_f32(const std::string& path, const std::string& name, const std::vector<int64_t>& shape, const float* data) {
  uint64_t numel = 1;
  std::string dims;
  for (size_t i = 0; i < shape.size(); ++i) {
    numel *= static_cast<uint64_t>(shape[i]);
    dims += (i ? "," : "") + std::to_string(shape[i]);
  }
  std::string header = "{\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + dims + "],\"data_offsets\":[0," +
                       std::to_string(numel * 4) + "]}}";
  while (header.size() % 8) header += ' ';
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error(path + ": cannot write");
    unsigned char size[8];
    uint64_t n = header.size();
    std::memcpy(size, &n, 8);
    f.write(reinterpret_cast<const char*>(size), 8);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(numel * 4));
    if (!f) throw std::runtime_error(path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot write (rename failed)");
  }
}

}  // namespace asymvq::st
