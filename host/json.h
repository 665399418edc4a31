// A small JSON reader for manifest.json, scheduler_config.json, the tokenizer's files and
// safetensors headers. Hand-written because neither the torch wheel nor this machine ships a
// JSON library (no nlohmann headers in torch/include or /usr/include), and these files are a
// few kB to a few MB: a recursive-descent parser of ~150 lines needs no build-time download.
// Refuses malformed input with the byte offset; nesting is capped so hostile input cannot
// overflow the stack.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace asymvq::json {

struct Value {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool b = false;
  double num = 0;
  bool is_int = false;  // an integer literal (no fraction or exponent)
  int64_t i = 0;
  std::string str;
  std::vector<Value> arr;
  std::vector<std::pair<std::string, Value>> obj;  // in file order (safetensors offsets do not need it)

  bool is_object() const { return kind == Object; }
  bool is_array() const { return kind == Array; }
  bool is_string() const { return kind == String; }
  bool is_number() const { return kind == Number; }
  const Value* find(const std::string& key) const {
    if (kind != Object) return nullptr;
    for (auto& kv : obj)
      if (kv.first == key) return &kv.second;
    return nullptr;
  }
};

class ParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Parser {
 public:
  Parser(const char* p, size_t n) : s_(p), n_(n) {}
  Value parse() {
    Value v = value(0);
    ws();
    if (pos_ != n_) fail("trailing characters");
    return v;
  }

 private:
  const char* s_;
  size_t n_;
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& what) {
    throw ParseError("invalid JSON at byte " + std::to_string(pos_) + ": " + what);
  }
  void ws() {
    while (pos_ < n_ && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
  }
  bool lit(const char* w) {
    size_t k = 0;
    while (w[k]) ++k;
    if (pos_ + k <= n_ && std::string(s_ + pos_, k) == w) {
      pos_ += k;
      return true;
    }
    return false;
  }
  Value value(int depth) {
    if (depth > 64) fail("nested too deeply");
    ws();
    if (pos_ >= n_) fail("unexpected end");
    Value v;
    char c = s_[pos_];
    if (c == '{') {
      v.kind = Value::Object;
      ++pos_;
      ws();
      if (pos_ < n_ && s_[pos_] == '}') { ++pos_; return v; }
      for (;;) {
        ws();
        if (pos_ >= n_ || s_[pos_] != '"') fail("expected a string key");
        std::string k = string();
        ws();
        if (pos_ >= n_ || s_[pos_] != ':') fail("expected ':'");
        ++pos_;
        v.obj.emplace_back(std::move(k), value(depth + 1));
        ws();
        if (pos_ < n_ && s_[pos_] == ',') { ++pos_; continue; }
        if (pos_ < n_ && s_[pos_] == '}') { ++pos_; return v; }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.kind = Value::Array;
      ++pos_;
      ws();
      if (pos_ < n_ && s_[pos_] == ']') { ++pos_; return v; }
      for (;;) {
        v.arr.push_back(value(depth + 1));
        ws();
        if (pos_ < n_ && s_[pos_] == ',') { ++pos_; continue; }
        if (pos_ < n_ && s_[pos_] == ']') { ++pos_; return v; }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.kind = Value::String;
      v.str = string();
      return v;
    }
    if (lit("true")) { v.kind = Value::Bool; v.b = true; return v; }
    if (lit("false")) { v.kind = Value::Bool; return v; }
    if (lit("null")) return v;
    if (lit("NaN") || lit("Infinity") || lit("-Infinity")) fail("NaN/Infinity are not JSON numbers");
    return number();
  }
  Value number() {
    size_t start = pos_;
    bool integral = true;
    if (pos_ < n_ && s_[pos_] == '-') ++pos_;
    size_t digits = pos_;
    while (pos_ < n_ && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    if (pos_ == digits) fail("expected a value");
    if (pos_ < n_ && s_[pos_] == '.') {
      integral = false;
      ++pos_;
      size_t f = pos_;
      while (pos_ < n_ && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      if (pos_ == f) fail("expected digits after '.'");
    }
    if (pos_ < n_ && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < n_ && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      size_t e = pos_;
      while (pos_ < n_ && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      if (pos_ == e) fail("expected exponent digits");
    }
    std::string text(s_ + start, pos_ - start);
    Value v;
    v.kind = Value::Number;
    v.num = std::strtod(text.c_str(), nullptr);
    if (integral && pos_ - start < 19) {
      v.is_int = true;
      v.i = std::strtoll(text.c_str(), nullptr, 10);
    }
    return v;
  }
  static void utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (pos_ + 4 > n_) fail("short \\u escape");
    uint32_t cp = 0;
    for (int k = 0; k < 4; ++k) {
      char h = s_[pos_++];
      cp <<= 4;
      if (h >= '0' && h <= '9') cp |= uint32_t(h - '0');
      else if (h >= 'a' && h <= 'f') cp |= uint32_t(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') cp |= uint32_t(h - 'A' + 10);
      else fail("bad \\u escape");
    }
    return cp;
  }
  std::string string() {
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (pos_ >= n_) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') { out += c; continue; }
      if (pos_ >= n_) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && pos_ + 6 <= n_ && s_[pos_] == '\\' && s_[pos_ + 1] == 'u') {
            pos_ += 2;
            uint32_t lo = hex4();
            if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            else fail("bad surrogate pair");
          }
          utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
  }
};

inline Value parse(const std::string& text) { return Parser(text.data(), text.size()).parse(); }

}  // namespace asymvq::json
