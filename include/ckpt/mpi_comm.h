// The MPI communicator (built when ckpt is configured with MPI).
//
// Collectives are non-blocking MPI calls polled until they complete or the
// timeout passes. MPI cannot cancel a started collective: after a timeout
// the communicator is broken and the job should end. A rank that dies is
// handled by the MPI runtime, which ends the whole job (OpenMPI's default).
#ifndef CKPT_MPI_COMM_H_
#define CKPT_MPI_COMM_H_

#include <memory>

#include "ckpt/comm.h"

namespace ckpt {

// A communicator over MPI_COMM_WORLD (a private duplicate of it). Calls
// MPI_Init_thread when MPI is not initialized yet, and then MPI_Finalize when
// the last such communicator is destroyed.
Result<std::unique_ptr<Communicator>> NewMpiWorldCommunicator();

// Whether this build has MPI support.
bool HaveMpi();

}  // namespace ckpt

#endif  // CKPT_MPI_COMM_H_
