#include "ckpt/comm.h"

namespace ckpt {

Result<bool> Communicator::AnyTrue(bool flag, Timeout timeout) {
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> all, AllGather(flag ? "1" : "0", timeout));
  for (const std::string& s : all) {
    if (s == "1") return true;
  }
  return false;
}

Status Communicator::AgreeOnStatus(const Status& local, Timeout timeout) {
  // Encoding: code as one byte, then the message.
  std::string mine;
  if (!local.ok()) {
    mine.push_back(static_cast<char>(local.code()));
    mine += local.message();
  }
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> all, AllGather(mine, timeout));
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].empty()) continue;
    auto code = static_cast<StatusCode>(static_cast<unsigned char>(all[r][0]));
    return Status(code, "rank " + std::to_string(r) + ": " + all[r].substr(1));
  }
  return Status();
}

namespace {

class SingleRank final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string_view kind() const override { return "single"; }
  Status Barrier(Timeout) override { return Status(); }
  Result<std::vector<std::string>> AllGather(std::string_view mine, Timeout) override {
    return std::vector<std::string>{std::string(mine)};
  }
  Status Broadcast(int root, std::string*, Timeout) override {
    if (root != 0)
      return InvalidArgumentError("broadcast root " + std::to_string(root) + " of 1 rank");
    return Status();
  }
  Result<std::unique_ptr<Communicator>> Duplicate(Timeout) override {
    return std::unique_ptr<Communicator>(std::make_unique<SingleRank>());
  }
};

}  // namespace

std::unique_ptr<Communicator> NewSingleRankCommunicator() { return std::make_unique<SingleRank>(); }

}  // namespace ckpt
