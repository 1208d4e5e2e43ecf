// Stand-in for builds without MPI.
#include "ckpt/mpi_comm.h"

namespace ckpt {

bool HaveMpi() { return false; }

Result<std::unique_ptr<Communicator>> NewMpiWorldCommunicator() {
  return FailedPreconditionError("this ckpt was built without MPI support");
}

}  // namespace ckpt
