// Messages the library reports without failing: warnings about costly
// settings, key-mismatch summaries, progress. They go to stderr unless the
// application installs its own sink.
#ifndef CKPT_LOG_H_
#define CKPT_LOG_H_

#include <functional>
#include <string_view>

namespace ckpt {

enum class LogLevel { kInfo, kWarning, kError };

std::string_view LogLevelName(LogLevel level);

using LogSink = std::function<void(LogLevel level, std::string_view message)>;

// Replaces the process-wide sink; an empty function restores stderr.
// Returns the previous sink (empty when it was the default).
LogSink SetLogSink(LogSink sink);

void Log(LogLevel level, std::string_view message);

}  // namespace ckpt

#endif  // CKPT_LOG_H_
