// A small binary encoding for plans exchanged between ranks: little-endian
// varints and length-prefixed strings. The decoder checks every length.
#ifndef CKPT_PLAN_CODEC_H_
#define CKPT_PLAN_CODEC_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "ckpt/status.h"

namespace ckpt::plan {

class Encoder {
 public:
  void U64(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>(v | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  void Str(std::string_view s) {
    U64(s.size());
    out_.append(s);
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

// One varint from [p, end): the position after it, or nullptr when the bytes
// end first or it runs past 64 bits. For hot loops over many values.
inline const unsigned char* ReadVarint(const unsigned char* p, const unsigned char* end,
                                       uint64_t* v) {
  if (p < end && *p < 0x80) {  // one byte: the usual case
    *v = *p;
    return p + 1;
  }
  uint64_t r = 0;
  for (int shift = 0; shift < 64 && p < end; shift += 7) {
    const unsigned char b = *p++;
    r |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) {
      *v = r;
      return p;
    }
  }
  return nullptr;
}

class Decoder {
 public:
  explicit Decoder(std::string_view in) : in_(in) {}
  bool U64(uint64_t* v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= in_.size()) return false;
      auto b = static_cast<unsigned char>(in_[pos_++]);
      r |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) {
        *v = r;
        return true;
      }
    }
    return false;
  }
  bool Str(std::string* s) {
    uint64_t n;
    if (!U64(&n) || n > in_.size() - pos_) return false;
    s->assign(in_.substr(pos_, n));
    pos_ += n;
    return true;
  }
  // A string's position in the input instead of a copy.
  bool StrRef(uint32_t* at, uint64_t* len) {
    uint64_t n;
    if (!U64(&n) || n > in_.size() - pos_ || pos_ > UINT32_MAX) return false;
    *at = static_cast<uint32_t>(pos_);
    *len = n;
    pos_ += n;
    return true;
  }
  bool done() const { return pos_ == in_.size(); }
  size_t position() const { return pos_; }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace ckpt::plan

#endif  // CKPT_PLAN_CODEC_H_
