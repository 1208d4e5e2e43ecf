// Status and Result<T>: how every fallible ckpt call reports failure.
//
// A Status is either OK or carries a code and a human-readable message that
// names the file, tensor and offending value. Context is prepended on the way
// up ("reading shard-00002-...: tensor 'w': ..."), so the final message reads
// from the outermost operation to the root cause. No exceptions cross the
// public API; Result<T> holds either a value or a non-OK Status.
#ifndef CKPT_STATUS_H_
#define CKPT_STATUS_H_

#include <cassert>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace ckpt {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument,     // the caller or an input file broke a documented rule
  kNotFound,            // a file, tensor or key does not exist
  kAlreadyExists,       // refusing to overwrite something that exists
  kDataLoss,            // stored bytes are corrupt, truncated or inconsistent
  kIOError,             // the operating system or device failed
  kFailedPrecondition,  // the system is not in a state where the call can work
  kUnavailable,         // a resource (peer, disk space) is temporarily missing
  kInternal,            // a broken invariant inside ckpt: a bug
};

// Name of a code, e.g. "DataLoss".
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message);

  static Status Ok() { return Status(); }

  bool ok() const { return state_ == nullptr; }
  StatusCode code() const { return ok() ? StatusCode::kOk : state_->code; }
  // The message without the code name; empty when OK.
  const std::string& message() const;
  // "DataLoss: reading x: ..." or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "context: <old message>". OK stays OK.
  Status WithContext(std::string_view context) const&;
  Status WithContext(std::string_view context) &&;

  // Marks the status as deliberately ignored.
  void IgnoreError() const {}

  friend bool operator==(const Status& a, const Status& b) {
    return a.code() == b.code() && a.message() == b.message();
  }

 private:
  struct State {
    StatusCode code;
    std::string message;
  };
  // Null when OK, which keeps the OK path to one pointer copy.
  std::shared_ptr<const State> state_;
};

Status InvalidArgumentError(std::string message);
Status NotFoundError(std::string message);
Status AlreadyExistsError(std::string message);
Status DataLossError(std::string message);
Status IOError(std::string message);
Status FailedPreconditionError(std::string message);
Status UnavailableError(std::string message);
Status InternalError(std::string message);

// Holds a T or a non-OK Status. Constructing a Result from an OK Status is a
// bug and yields an Internal error instead.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(const T& value) : v_(value) {}            // NOLINT: implicit by design
  Result(T&& value) : v_(std::move(value)) {}      // NOLINT
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    if (std::get<Status>(v_).ok()) v_ = InternalError("Result constructed from OK status");
  }
  template <typename U>
  requires(std::is_constructible_v<T, U&&> && !std::is_same_v<std::decay_t<U>, Status> &&
           !std::is_same_v<std::decay_t<U>, T> && !std::is_same_v<std::decay_t<U>, Result>)
      Result(U&& value)
      : v_(T(std::forward<U>(value))) {}  // NOLINT

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  T& value() & {
    assert(ok());
    return std::get<T>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<T>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<T>(std::move(v_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  Result WithContext(std::string_view context) && {
    if (ok()) return std::move(*this);
    return std::get<Status>(v_).WithContext(context);
  }

 private:
  std::variant<T, Status> v_;
};

namespace internal {
inline Status AsStatus(Status s) { return s; }
template <typename T>
Status AsStatus(const Result<T>& r) {
  return r.status();
}
}  // namespace internal

}  // namespace ckpt

#define CKPT_CONCAT_INNER_(a, b) a##b
#define CKPT_CONCAT_(a, b) CKPT_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (a Status or Result) fails.
#define CKPT_RETURN_IF_ERROR(expr)                                    \
  do {                                                                \
    ::ckpt::Status _ckpt_status = ::ckpt::internal::AsStatus((expr)); \
    if (!_ckpt_status.ok()) return _ckpt_status;                      \
  } while (0)

// `CKPT_ASSIGN_OR_RETURN(auto x, Foo());` binds the value or returns the error.
#define CKPT_ASSIGN_OR_RETURN(lhs, expr) \
  CKPT_ASSIGN_OR_RETURN_IMPL_(CKPT_CONCAT_(_ckpt_result_, __LINE__), lhs, expr)
#define CKPT_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()

#endif  // CKPT_STATUS_H_
