"""
ckpt's engine, called from the ckpt package (use the package, not this module).
"""

from collections.abc import Mapping, Sequence


VERSION: str = '0.1.0'

def register_errors(classes: dict) -> None:
    """Sets the exception class raised for each status code name."""

def dtype_names() -> list[str]: ...

class Communicator:
    @staticmethod
    def single() -> Communicator:
        """One rank, no peers."""

    @staticmethod
    def from_python(impl: object, rank: int, size: int) -> Communicator:
        """
        Collectives through `impl`'s all_gather/broadcast/barrier/duplicate methods.
        """

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def barrier(self, timeout_s: float) -> None: ...

    def agree(self, error: str | None, timeout_s: float) -> None:
        """Raises on every rank when any rank passes an error message."""

class LoadOptions:
    def __init__(self) -> None: ...

    @property
    def allow_missing(self) -> bool: ...

    @allow_missing.setter
    def allow_missing(self, arg: bool, /) -> None: ...

    @property
    def allow_unexpected(self) -> bool: ...

    @allow_unexpected.setter
    def allow_unexpected(self, arg: bool, /) -> None: ...

    @property
    def key_mapping(self) -> list[tuple[str, str]]: ...

    @key_mapping.setter
    def key_mapping(self, arg: Sequence[tuple[str, str]], /) -> None: ...

    @property
    def skip_prefixes(self) -> list[str]: ...

    @skip_prefixes.setter
    def skip_prefixes(self, arg: Sequence[str], /) -> None: ...

    @property
    def tie_word_embeddings(self) -> bool: ...

    @tie_word_embeddings.setter
    def tie_word_embeddings(self, arg: bool, /) -> None: ...

    @property
    def verify_checksums(self) -> bool: ...

    @verify_checksums.setter
    def verify_checksums(self, arg: bool, /) -> None: ...

    @property
    def cast_floats(self) -> bool: ...

    @cast_floats.setter
    def cast_floats(self, arg: bool, /) -> None: ...

    @property
    def dequantize_fp8(self) -> bool: ...

    @dequantize_fp8.setter
    def dequantize_fp8(self, arg: bool, /) -> None: ...

    @property
    def timeout_s(self) -> float: ...

    @timeout_s.setter
    def timeout_s(self, arg: float, /) -> None: ...

class ConsolidateOptions:
    def __init__(self) -> None: ...

    @property
    def base_model_dir(self) -> str: ...

    @base_model_dir.setter
    def base_model_dir(self, arg: str, /) -> None: ...

    @property
    def max_shard_size(self) -> int: ...

    @max_shard_size.setter
    def max_shard_size(self, arg: int, /) -> None: ...

    @property
    def equal_files(self) -> int: ...

    @equal_files.setter
    def equal_files(self, arg: int, /) -> None: ...

    @property
    def threads(self) -> int: ...

    @threads.setter
    def threads(self, arg: int, /) -> None: ...

    @property
    def cast_dtype(self) -> str | None: ...

    @cast_dtype.setter
    def cast_dtype(self, name: str | None) -> None: ...

    @property
    def timeout_s(self) -> float: ...

    @timeout_s.setter
    def timeout_s(self, arg: float, /) -> None: ...

def save(comm: Communicator, path: str, tensors: Sequence[tuple[str, str, Sequence[int], Sequence[tuple[Sequence[int], Sequence[int], int, Sequence[int] | None]]]], json: Mapping[str, str], bytes: dict, timeout_s: float) -> None:
    """Collective sharded save of described tensors."""

def load(comm: Communicator, path: str, tensors: Sequence[tuple[str, str, Sequence[int], Sequence[tuple[Sequence[int], Sequence[int], int, Sequence[int] | None]]]], options: LoadOptions) -> dict:
    """
    Collective sharded load into described tensors; returns load statistics.
    """

def read_extra_state(path: str) -> tuple:
    """
    The non-tensor entries of a sharded checkpoint: (json texts, raw bytes).
    """

def inspect(path: str) -> dict:
    """The files, tensors and chunks of a sharded checkpoint."""

def verify(path: str) -> None:
    """Reads every chunk of a sharded checkpoint and checks its checksums."""

def consolidate(comm: Communicator, in_dir: str, out_dir: str, options: ConsolidateOptions) -> dict:
    """Collective: a sharded checkpoint into a Hugging Face model directory."""

def create_staging_dir(dir: str, token: str = '') -> str:
    """
    Refuses an existing `dir`; removes staging left by earlier saves to it; creates and returns the hidden staging directory beside it (named by `token`, 16 hex digits, when given).
    """

def write_shard_file(staging: str, file: str, tensors: Sequence[tuple[str, str, Sequence[int], Sequence[tuple[Sequence[int], Sequence[int], int, Sequence[int] | None]]]]) -> tuple[str, int, str]:
    """
    Writes every described chunk into one shard file, durably; returns (file, size, header hash).
    """

def publish_staging_dir(staging: str, dir: str, shards: Sequence[tuple[str, int, str]], world_size: int, json: Mapping[str, str], bytes: dict) -> None:
    """
    Writes the manifest and extra state, then renames the staging directory to `dir`.
    """

def write_dcp_data_file(staging: str, file: str, blobs: Sequence[bytes]) -> list[tuple[int, int]]:
    """
    Writes the blobs back to back into a new file, durably; returns each one's (offset, length).
    """

def publish_dcp_dir(staging: str, dir: str, tensors: Sequence[tuple[str, str, Sequence[int], Sequence[tuple[Sequence[int], Sequence[int], str, int, int]]]], bytes: Sequence[tuple[str, str, int, int]]) -> None:
    """
    Writes .metadata for (fqn, dtype, size, [(offsets, sizes, file, offset, length)]) tensors and (fqn, file, offset, length) byte entries, then renames the staging directory to `dir`.
    """

def remove_all(path: str) -> None: ...

class AsyncSaver:
    def __init__(self, comm: Communicator, copy_threads: int = 0, staging_budget: int = 0) -> None: ...

    def submit(self, path: str, tensors: Sequence[tuple[str, str, Sequence[int], Sequence[tuple[Sequence[int], Sequence[int], int, Sequence[int] | None]]]], json: Mapping[str, str], bytes: dict, timeout_s: float) -> int:
        """Stages the tensors and queues the save; returns its ticket."""

    def wait(self, ticket: int) -> None: ...

    def done(self, ticket: int) -> bool: ...

    def drain(self) -> None: ...

    def close(self) -> None: ...

class SafetensorsFile:
    @staticmethod
    def open(path: str) -> SafetensorsFile: ...

    def keys(self) -> list[str]:
        """Tensor names in file order."""

    def metadata(self) -> dict[str, str] | None:
        """`__metadata__`, or None when the file has none."""

    def info(self, name: str) -> tuple[str, list[int], int, int]:
        """(dtype, shape, begin, end) of a tensor."""

    def read_range(self, name: str, offset: int, ptr: int, nbytes: int) -> None: ...

    def read_box(self, name: str, offsets: Sequence[int], shape: Sequence[int], ptr: int) -> None: ...

def save_safetensors(path: str, tensors: Sequence[tuple[str, str, Sequence[int], int, Sequence[int] | None]], metadata: Mapping[str, str] | None) -> None:
    """Writes a safetensors file from tensors in memory, atomically."""
