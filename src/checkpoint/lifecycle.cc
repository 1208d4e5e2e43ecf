// The checkpoint root: reserving epoch_E_step_S directories, publishing
// them (marker, pointers, retention) and finding the one to resume from.
//
// Invariants, whatever fails and whenever the process dies:
// - a directory named epoch_E_step_S without `.incomplete` is complete;
// - LATEST / LOWEST_VAL name complete checkpoints, or are ignored by readers;
// - removed checkpoints are first renamed to hidden names, so a half-removed
//   one is never mistaken for a complete one.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "async/worker.h"
#include "checkpoint/checkpointer_impl.h"
#include "ckpt/checkpointer.h"
#include "ckpt/log.h"
#include "core/encoding.h"
#include "format/json_util.h"
#include "io/staged_dir.h"

namespace ckpt {
namespace {

using json = nlohmann::json;

bool ParseInt(std::string_view s, int64_t* out) {
  if (s.empty() || s.size() > 18) return false;
  if (s.size() > 1 && s[0] == '0') return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size();
}

struct Entry {
  std::string name;
  int64_t epoch;
  int64_t step;
  bool complete;
};

// Newest first: by step, then epoch.
bool Newer(const Entry& a, const Entry& b) {
  return a.step != b.step ? a.step > b.step : a.epoch > b.epoch;
}

Result<bool> IsComplete(Storage& storage, const std::string& dir) {
  Result<DirEntry> st = storage.Stat(dir);
  if (!st.ok()) {
    if (st.status().code() == StatusCode::kNotFound) return false;
    return st.status();
  }
  if (st->type != EntryType::kDirectory) return false;
  CKPT_ASSIGN_OR_RETURN(bool marked, Exists(storage, JoinPath(dir, kIncompleteMarker)));
  return !marked;
}

Result<std::vector<Entry>> ListCheckpoints(Storage& storage, const std::string& root) {
  std::vector<Entry> out;
  Result<std::vector<DirEntry>> entries = storage.List(root);
  if (!entries.ok()) {
    if (entries.status().code() == StatusCode::kNotFound) return out;
    return entries.status();
  }
  for (const DirEntry& e : *entries) {
    Entry c{e.name, 0, 0, false};
    if (e.type != EntryType::kDirectory || !ParseCheckpointName(e.name, &c.epoch, &c.step))
      continue;
    CKPT_ASSIGN_OR_RETURN(c.complete, IsComplete(storage, JoinPath(root, e.name)));
    out.push_back(std::move(c));
  }
  std::sort(out.begin(), out.end(), Newer);
  return out;
}

// The checkpoint name a pointer holds: the LATEST symlink's target, else the
// first line of LATEST.txt. nullopt when neither exists or holds a name.
Result<std::optional<std::string>> ReadPointer(Storage& storage, const std::string& root,
                                               std::string_view name) {
  const std::string link = JoinPath(root, name);
  Result<std::string> target = storage.ReadLink(link);
  std::string value;
  if (target.ok()) {
    value = *target;
  } else {
    const std::string text_path = link + ".txt";
    Result<std::string> text = ReadFileToString(storage, text_path);
    if (!text.ok()) {
      if (text.status().code() == StatusCode::kNotFound) return std::optional<std::string>();
      return text.status();
    }
    value = text->substr(0, text->find_first_of("\r\n"));
  }
  while (!value.empty() && value.back() == '/') value.pop_back();
  value = std::string(Basename(value));
  int64_t e, s;
  if (!ParseCheckpointName(value, &e, &s)) return std::optional<std::string>();
  return std::optional<std::string>(value);
}

// Points `name` at checkpoint `target`: a relative symlink swapped in by
// rename; where links are unavailable, `name`.txt replaced atomically.
Status UpdatePointer(Storage& storage, const std::string& root, std::string_view name,
                     const std::string& target) {
  const std::string link = JoinPath(root, name);
  const std::string tmp = JoinPath(root, "." + std::string(name) + ".tmp-" + RandomToken());
  Status linked = storage.Symlink(target, tmp);
  if (linked.ok()) {
    Status s = storage.Rename(tmp, link);
    if (!s.ok()) {
      storage.Remove(tmp).IgnoreError();
      return s;
    }
    // A fallback file left by an earlier run would be stale; readers prefer
    // the link, so removing it is only tidying.
    Status removed = storage.Remove(link + ".txt");
    if (!removed.ok() && removed.code() != StatusCode::kNotFound) return removed;
    return storage.SyncDir(root);
  }
  CKPT_RETURN_IF_ERROR(WriteFileAtomically(storage, link + ".txt", target + "\n"));
  // A link from an earlier run would win over the file: drop it.
  if (storage.ReadLink(link).ok()) CKPT_RETURN_IF_ERROR(storage.Remove(link));
  return storage.SyncDir(root);
}

// Renames to a hidden name first, so nothing half-removed looks complete.
// Without rename (object stores) the `.incomplete` marker is written back
// first and deleted last (the storage removes directory markers before other
// objects), with the same effect.
Status RemoveCheckpoint(Storage& storage, const std::string& root, const std::string& name) {
  if (!storage.CanRename()) {
    const std::string dir = JoinPath(root, name);
    CKPT_RETURN_IF_ERROR(WriteFileAtomically(storage, JoinPath(dir, kIncompleteMarker), ""));
    CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, storage.List(dir));
    for (const DirEntry& e : entries) {
      if (e.name != kIncompleteMarker)
        CKPT_RETURN_IF_ERROR(RemoveAll(storage, JoinPath(dir, e.name)));
    }
    return RemoveAll(storage, dir);
  }
  const std::string trash = JoinPath(root, "." + name + ".trash-" + RandomToken());
  CKPT_RETURN_IF_ERROR(storage.Rename(JoinPath(root, name), trash));
  CKPT_RETURN_IF_ERROR(storage.SyncDir(root));
  return RemoveAll(storage, trash);
}

// Leftovers of interrupted work: staging and trash directories of
// checkpoints, temporary pointer links.
bool IsLeftover(std::string_view name) {
  if (name.empty() || name[0] != '.') return false;
  return name.find(".tmp-") != std::string_view::npos ||
         name.find(".trash-") != std::string_view::npos;
}

}  // namespace

std::string CheckpointName(int64_t epoch, int64_t step) {
  return "epoch_" + std::to_string(epoch) + "_step_" + std::to_string(step);
}

bool ParseCheckpointName(std::string_view name, int64_t* epoch, int64_t* step) {
  constexpr std::string_view kEpoch = "epoch_", kStep = "_step_";
  if (name.substr(0, kEpoch.size()) != kEpoch) return false;
  name.remove_prefix(kEpoch.size());
  size_t at = name.find(kStep);
  if (at == std::string_view::npos) return false;
  return ParseInt(name.substr(0, at), epoch) && ParseInt(name.substr(at + kStep.size()), step);
}

Result<std::optional<std::string>> FindLatestCheckpoint(Storage& storage, const std::string& root) {
  CKPT_ASSIGN_OR_RETURN(std::optional<std::string> latest, ReadPointer(storage, root, kLatestName));
  if (latest) {
    CKPT_ASSIGN_OR_RETURN(bool complete, IsComplete(storage, JoinPath(root, *latest)));
    if (complete) return std::optional<std::string>(JoinPath(root, *latest));
  }
  CKPT_ASSIGN_OR_RETURN(std::vector<Entry> all, ListCheckpoints(storage, root));
  for (const Entry& e : all) {
    if (e.complete) return std::optional<std::string>(JoinPath(root, e.name));
  }
  return std::optional<std::string>();
}

Status Checkpointer::Agree(const Status& local, std::string_view what) {
  return AgreeOn(impl_->comm, local, what);
}

Status Checkpointer::AgreeOn(Communicator& comm, const Status& local, std::string_view what) {
  return comm.AgreeOnStatus(local, impl_->config.timeout).WithContext(std::string(what));
}

Result<std::string> Checkpointer::Reserve(int64_t epoch, int64_t step) {
  if (epoch < 0 || step < 0) {
    return InvalidArgumentError("reserving a checkpoint: epoch " + std::to_string(epoch) +
                                " and step " + std::to_string(step) + " must not be negative");
  }
  const std::string& root = impl_->config.checkpoint_dir;
  const std::string name = CheckpointName(epoch, step);
  const std::string path = JoinPath(root, name);
  if (!impl_->config.enabled) return path;
  Status local;
  if (impl_->comm.rank() == 0) {
    local = [&]() -> Status {
      std::lock_guard<std::mutex> lock(impl_->root_mu);
      Storage& st = *impl_->storage;
      if (impl_->worker && IsPending(path)) {
        return FailedPreconditionError("reserving " + path +
                                       ": a background save into it is still running");
      }
      CKPT_RETURN_IF_ERROR(st.MakeDirs(root));
      CKPT_ASSIGN_OR_RETURN(bool exists, Exists(st, path));
      if (exists) {
        CKPT_ASSIGN_OR_RETURN(bool complete, IsComplete(st, path));
        if (complete) {
          return AlreadyExistsError("checkpoint " + path +
                                    " is already published; it is never overwritten");
        }
        CKPT_RETURN_IF_ERROR(RemoveCheckpoint(st, root, name));
      }
      if (st.CanRename()) {
        // Assembled under a hidden name, so the directory appears with its marker.
        CKPT_RETURN_IF_ERROR(BuildDirAtomically(st, path, [&](const std::string& staging) {
          return WriteFileAtomically(st, JoinPath(staging, kIncompleteMarker), "");
        }));
      } else {
        // An object store: the marker is the prefix's first object, so the
        // prefix never exists without it; then the directory's own marker,
        // so the checkpoint stays a directory once `.incomplete` is gone.
        CKPT_RETURN_IF_ERROR(WriteFileAtomically(st, JoinPath(path, kIncompleteMarker), ""));
        CKPT_RETURN_IF_ERROR(st.MakeDirs(path));
      }
      // Clean what interrupted saves left behind.
      CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, st.List(root));
      for (const DirEntry& e : entries) {
        int64_t ee, ss;
        const bool stale_checkpoint = e.name != name && e.type == EntryType::kDirectory &&
                                      ParseCheckpointName(e.name, &ee, &ss);
        if (stale_checkpoint) {
          CKPT_ASSIGN_OR_RETURN(bool complete, IsComplete(st, JoinPath(root, e.name)));
          // A checkpoint a background save is still writing is not dead.
          const bool pending = impl_->worker && IsPending(JoinPath(root, e.name));
          if (!complete && !pending) CKPT_RETURN_IF_ERROR(RemoveCheckpoint(st, root, e.name));
        } else if (IsLeftover(e.name)) {
          CKPT_RETURN_IF_ERROR(RemoveAll(st, JoinPath(root, e.name)));
        }
      }
      return Status();
    }();
  }
  CKPT_RETURN_IF_ERROR(Agree(local, "reserving " + path));
  return path;
}

Status Checkpointer::Publish(const std::string& weights_path,
                             const std::map<std::string, double>& metrics) {
  if (!impl_->config.enabled) return Status();
  if (impl_->closed)
    return FailedPreconditionError("publishing " + weights_path + ": the checkpointer is closed");
  if (!impl_->worker) return PublishOn(impl_->comm, weights_path, metrics);
  // After this directory's background saves, on the background thread: a
  // checkpoint is published only once everything in it is durable.
  std::lock_guard<std::mutex> lock(impl_->pending_mu);
  std::vector<uint64_t> saves = impl_->pending[weights_path];
  async::Worker* worker = impl_->worker.get();
  Communicator* bg = impl_->bg_comm.get();
  const uint64_t ticket =
      impl_->worker->Submit([this, worker, bg, saves, weights_path, metrics]() -> Status {
        for (uint64_t t : saves) {
          if (worker->Failed(t)) {
            return FailedPreconditionError("not publishing " + weights_path +
                                           ": a save into it failed");
          }
        }
        return PublishOn(*bg, weights_path, metrics);
      });
  impl_->pending[weights_path].push_back(ticket);
  return Status();
}

Status Checkpointer::PublishOn(Communicator& comm, const std::string& weights_path,
                               const std::map<std::string, double>& metrics) {
  const std::string& root = impl_->config.checkpoint_dir;
  const std::string name(Basename(weights_path));
  const std::string what = "publishing " + weights_path;
  // Every rank has finished writing before rank 0 touches the marker.
  CKPT_RETURN_IF_ERROR(AgreeOn(comm, Status(), what));
  Status local;
  if (comm.rank() == 0) {
    local = [&]() -> Status {
      std::lock_guard<std::mutex> lock(impl_->root_mu);
      Storage& st = *impl_->storage;
      int64_t epoch, step;
      if (JoinPath(root, name) != weights_path || !ParseCheckpointName(name, &epoch, &step)) {
        return InvalidArgumentError(weights_path + " is not a checkpoint directory of " + root +
                                    " (expected " + JoinPath(root, "epoch_E_step_S") + ")");
      }
      const std::string marker = JoinPath(weights_path, kIncompleteMarker);
      CKPT_ASSIGN_OR_RETURN(bool reserved, Exists(st, marker));
      if (!reserved) {
        return FailedPreconditionError(weights_path +
                                       " was not reserved or is already published (no " +
                                       std::string(kIncompleteMarker) + ")");
      }
      if (!metrics.empty()) {
        json j = json::object();
        for (const auto& [k, v] : metrics) j[k] = std::isfinite(v) ? json(v) : json(nullptr);
        CKPT_RETURN_IF_ERROR(
            WriteFileAtomically(st, JoinPath(weights_path, "losses.json"), j.dump(2) + "\n"));
      }
      CKPT_RETURN_IF_ERROR(st.SyncDir(weights_path));
      CKPT_ASSIGN_OR_RETURN(std::optional<std::string> previous_latest,
                            ReadPointer(st, root, kLatestName));
      CKPT_ASSIGN_OR_RETURN(std::optional<std::string> previous_best,
                            ReadPointer(st, root, kLowestValName));
      // LATEST moves first, while the checkpoint is still marked (readers
      // skip a LATEST whose target is incomplete); the commit point is the
      // marker's removal. So no complete checkpoint is ever newer than the
      // one LATEST names, and a resume never re-reserves a published step.
      // A failure after the commit point (the directory fsync, LOWEST_VAL)
      // puts the marker back and the pointers as they were, so a save that
      // reports an error is never the one resumed.
      Status published = [&]() -> Status {
        CKPT_RETURN_IF_ERROR(UpdatePointer(st, root, kLatestName, name));
        CKPT_RETURN_IF_ERROR(st.Remove(marker));
        CKPT_RETURN_IF_ERROR(st.SyncDir(weights_path));
        auto metric = metrics.find(impl_->config.best_metric_key);
        if (metric == metrics.end() || !std::isfinite(metric->second)) return Status();
        bool better = true;
        if (previous_best && *previous_best != name) {
          const std::string losses = JoinPath(JoinPath(root, *previous_best), "losses.json");
          CKPT_ASSIGN_OR_RETURN(bool complete, IsComplete(st, JoinPath(root, *previous_best)));
          Result<std::string> text =
              complete ? ReadFileToString(st, losses) : Result<std::string>(std::string());
          if (!text.ok() && text.status().code() != StatusCode::kNotFound) return text.status();
          if (text.ok() && !text->empty()) {
            Result<json> j = ParseStrictJson(*text, losses, 4);
            if (j.ok() && j->is_object() && j->contains(impl_->config.best_metric_key) &&
                (*j)[impl_->config.best_metric_key].is_number()) {
              better = metric->second < (*j)[impl_->config.best_metric_key].get<double>();
            }
          }
        }
        if (better) CKPT_RETURN_IF_ERROR(UpdatePointer(st, root, kLowestValName, name));
        return Status();
      }();
      if (!published.ok()) {
        WriteFileAtomically(st, marker, "").IgnoreError();
        if (previous_latest) UpdatePointer(st, root, kLatestName, *previous_latest).IgnoreError();
        if (previous_best) UpdatePointer(st, root, kLowestValName, *previous_best).IgnoreError();
        return published;
      }
      // Housekeeping: a failure to remove old checkpoints leaves them for the
      // next publish; the new checkpoint stands.
      Status kept = ApplyRetention();
      if (!kept.ok())
        Log(LogLevel::kWarning, "retention in " + root + " failed: " + kept.ToString());
      return Status();
    }();
  }
  return AgreeOn(comm, local, what);
}

Status Checkpointer::ApplyRetention() {
  if (!impl_->config.max_recent_checkpoints) return Status();
  Storage& st = *impl_->storage;
  const std::string& root = impl_->config.checkpoint_dir;
  CKPT_ASSIGN_OR_RETURN(std::vector<Entry> all, ListCheckpoints(st, root));
  CKPT_ASSIGN_OR_RETURN(std::optional<std::string> latest, ReadPointer(st, root, kLatestName));
  CKPT_ASSIGN_OR_RETURN(std::optional<std::string> best, ReadPointer(st, root, kLowestValName));
  int kept = 0;
  for (const Entry& e : all) {
    if (!e.complete) continue;  // another save's, or removed at the next reserve
    if (kept < *impl_->config.max_recent_checkpoints) {
      ++kept;
      continue;
    }
    if (e.name == latest || e.name == best) continue;
    CKPT_RETURN_IF_ERROR(RemoveCheckpoint(st, root, e.name));
  }
  return Status();
}

Result<std::optional<std::string>> Checkpointer::FindLatest() {
  std::string found;
  Status local;
  if (impl_->comm.rank() == 0) {
    Result<std::optional<std::string>> r =
        FindLatestCheckpoint(*impl_->storage, impl_->config.checkpoint_dir);
    local = r.status();
    if (r.ok() && *r) found = "+" + **r;
  }
  CKPT_RETURN_IF_ERROR(
      Agree(local, "finding the latest checkpoint in " + impl_->config.checkpoint_dir));
  CKPT_RETURN_IF_ERROR(impl_->comm.Broadcast(0, &found, impl_->config.timeout));
  if (found.empty()) return std::optional<std::string>();
  return std::optional<std::string>(found.substr(1));
}

Status Checkpointer::SaveConfig(std::string_view yaml, const std::string& weights_path) {
  if (!impl_->config.enabled) return Status();
  Status local;
  if (impl_->comm.rank() == 0)
    local = WriteFileAtomically(*impl_->storage, JoinPath(weights_path, "config.yaml"), yaml);
  return Agree(local, "saving config.yaml in " + weights_path);
}

}  // namespace ckpt
