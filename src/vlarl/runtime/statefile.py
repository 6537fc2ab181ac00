"""A nested state tree as one JSON file and one safetensors file, with no pickle anywhere.

    save_state("state.json", {"optimizers": ..., "counters": ..., "rng": ...})
    state = load_state("state.json")          # the same tree, the same types

What a tree may hold, and what comes back:

    dict (str or int keys)   dict, keys and order kept (an OrderedDict comes back a dict)
    list, tuple              list, tuple (``random.getstate()`` stays a tuple of tuples)
    str, bool, None          themselves
    int                      int, of any size (PCG64's 128-bit state)
    float                    float, NaN and +-inf included
    numpy scalar             numpy scalar of the same dtype
    numpy array, np.memmap   numpy array of the same dtype and shape (a memmap comes back in memory)
    torch.Tensor             CPU tensor of the same dtype and shape (bfloat16 included)

Arrays and tensors go to ``state.safetensors`` beside the JSON file; the JSON records that
file's size and sha256 and where each array sits in the tree. Anything else is refused when
saving, with the key path of the offending value. Loading parses JSON and safetensors only,
so a crafted file cannot run code: at worst it is refused, as anything malformed is, with a
``CheckpointError`` naming the file.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vlarl.errors import CheckpointError
from vlarl.fileio import atomic_write_text, fsync_dir

FORMAT = "vlarl.statefile"
VERSION = 1

# numpy dtypes an array may have -> the torch dtype its bytes are stored as (unsigned ints wider
# than a byte travel as the signed type of their width: torch has no such dtypes before 2.3)
_NUMPY = {
    "bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32,
    "int64": torch.int64, "uint16": torch.int16, "uint32": torch.int32, "uint64": torch.int64,
    "float16": torch.float16, "float32": torch.float32, "float64": torch.float64,
}
_TORCH = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
          torch.float16, torch.bfloat16, torch.float32, torch.float64}
_INT64 = 2**63  # ints beyond int64 are written as hex strings, so any JSON reader keeps them exact
_HEX = re.compile(r"-?0x[0-9a-f]+")
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_FIELDS = {"format", "version", "tensors", "tree"}
_TAGS = ("$tuple", "$dict", "$int", "$float", "$ndarray", "$scalar", "$tensor")


def tensors_path(path: str | Path) -> Path:
    """The safetensors file that goes with the state file ``path``."""
    return Path(path).with_suffix(".safetensors")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (replay buffers can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_state(path: str | Path, tree: Any) -> dict[str, str]:
    """Write ``tree`` as ``path`` (JSON) and its arrays as ``path`` with ``.safetensors``;
    each file is replaced atomically, the arrays first. Returns {file name: sha256} of both.

    Raises ``TypeError`` naming the key path of a value that is not a state value."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    encoded = _encode(tree, "state", tensors, storages)
    arrays = tensors_path(path)
    tmp = arrays.with_name(arrays.name + ".tmp")
    save_file(tensors, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, arrays)
    fsync_dir(arrays.parent)
    digest = sha256_file(arrays)
    header = {"format": FORMAT, "version": VERSION,
              "tensors": {"file": arrays.name, "size": arrays.stat().st_size, "sha256": digest}, "tree": encoded}
    text = json.dumps(header, indent=1, allow_nan=False)
    atomic_write_text(path, text)
    return {arrays.name: digest, path.name: hashlib.sha256(text.encode()).hexdigest()}


def load_state(path: str | Path, verify: bool = True) -> Any:
    """The tree saved by ``save_state`` at ``path``. ``verify`` checks the arrays file against
    the size and sha256 the JSON records (a caller that has just hashed it may skip that).

    Raises ``CheckpointError`` naming the file for anything missing, damaged or malformed."""
    path = Path(path)
    try:
        header = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant,
                            object_pairs_hook=_no_duplicates)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vlarl state file (no \"format\": \"{FORMAT}\")")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path}: state file version {header.get('version')!r}; this vlarl reads {VERSION}")
    if set(header) != _FIELDS:
        raise CheckpointError(f"{path}: fields {sorted(header)}; a state file has {sorted(_FIELDS)}")
    arrays = tensors_path(path)
    info = header["tensors"]
    if (not isinstance(info, dict) or info.get("file") != arrays.name or type(info.get("size")) is not int
            or not isinstance(info.get("sha256"), str)):
        raise CheckpointError(f"{path}: \"tensors\" must be {{\"file\": \"{arrays.name}\", \"size\": int, "
                              f"\"sha256\": str}}, got {str(info)[:200]}")
    if not arrays.exists():
        raise CheckpointError(f"{arrays}: missing (its state file {path.name} refers to it)")
    if verify:
        problem = file_problem(arrays, info["size"], info["sha256"], path.name)
        if problem:
            raise CheckpointError(f"{arrays}: {problem}")
    try:
        tensors = load_file(str(arrays))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{arrays}: unreadable safetensors ({type(err).__name__}: {err})") from None
    try:
        tree = _decode(header["tree"], "state", tensors)
    except _Malformed as err:
        raise CheckpointError(f"{path}: malformed at {err}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: malformed (nested too deeply)") from None
    if tensors:
        raise CheckpointError(f"{arrays}: holds arrays the state file does not refer to: {sorted(tensors)[:5]}")
    return tree


def file_problem(path: Path, size: int, sha256: str, recorded_in: str) -> str | None:
    """What is wrong with ``path`` against its recorded size and sha256, or ``None``."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return f"missing ({recorded_in} lists it)"
    if actual != size:
        return f"{actual} bytes, {recorded_in} records {size} (truncated or overwritten)"
    digest = sha256_file(path)
    if digest != sha256:
        return f"sha256 {digest[:16]}..., {recorded_in} records {sha256[:16]}... (its bytes changed after it was written)"
    return None


# --- encoding ---------------------------------------------------------------------------
def _key(path: str, key: Any) -> str:
    return f"{path}[{key!r}]"


def _encode(x: Any, path: str, tensors: dict[str, torch.Tensor], storages: set[int]) -> Any:
    kind = type(x)
    if x is None or kind is bool or kind is str:
        return x
    if kind is int:
        return x if -_INT64 <= x < _INT64 else {"$int": hex(x)}
    if kind is float:
        if math.isfinite(x):
            return x
        return {"$float": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}
    if kind is list:
        return [_encode(v, f"{path}[{i}]", tensors, storages) for i, v in enumerate(x)]
    if kind is tuple:
        return {"$tuple": [_encode(v, f"{path}[{i}]", tensors, storages) for i, v in enumerate(x)]}
    if kind is dict or kind is collections.OrderedDict:
        for k in x:
            if type(k) is not str and type(k) is not int:
                raise TypeError(f"cannot save {path}: key {k!r} is a {type(k).__name__}; state keys are str or int")
            if type(k) is int and not -_INT64 <= k < _INT64:
                raise TypeError(f"cannot save {path}: int key {k} does not fit in 64 bits")
        values = {k: _encode(v, _key(path, k), tensors, storages) for k, v in x.items()}
        if all(type(k) is str and not k.startswith("$") for k in x):
            return values
        return {"$dict": [[k, v] for k, v in values.items()]}  # int keys, or keys that look like tags
    if isinstance(x, np.generic):  # before ndarray: a numpy scalar is no array
        dtype = _numpy_dtype(x.dtype, path)
        return {"$scalar": _add(torch.from_numpy(np.asarray(x).view(_view_of(dtype))), tensors, storages),
                "dtype": dtype}
    if isinstance(x, np.ndarray) and kind in (np.ndarray, np.memmap):
        dtype = _numpy_dtype(x.dtype, path)
        array = np.ascontiguousarray(x).view(_view_of(dtype))
        return {"$ndarray": _add(torch.from_numpy(array), tensors, storages), "dtype": dtype}
    if kind is torch.Tensor:
        if x.layout != torch.strided or x.dtype not in _TORCH:
            raise TypeError(f"cannot save {path}: a {x.layout} {x.dtype} tensor; state tensors are dense "
                            f"and one of {sorted(str(d) for d in _TORCH)}")
        return {"$tensor": _add(x.detach().cpu().contiguous(), tensors, storages)}
    raise TypeError(f"cannot save {path}: a {kind.__module__}.{kind.__qualname__} is not a state value (dicts with "
                    "str or int keys, lists, tuples, str, int, float, bool, None, numpy arrays and scalars, "
                    "torch tensors are)")


def _numpy_dtype(dtype: np.dtype, path: str) -> str:
    if dtype.name not in _NUMPY or not dtype.isnative:
        raise TypeError(f"cannot save {path}: numpy dtype {dtype.str} ({dtype.name}); state arrays are "
                        f"native-endian {', '.join(_NUMPY)}")
    return dtype.name


def _view_of(dtype: str) -> np.dtype:
    """The numpy dtype whose bytes torch stores for an array of ``dtype``."""
    return np.dtype({"uint16": np.int16, "uint32": np.int32, "uint64": np.int64}.get(dtype, dtype))


def _add(t: torch.Tensor, tensors: dict[str, torch.Tensor], storages: set[int]) -> str:
    # safetensors (before 0.6) refuses tensors that share memory: a view of something already
    # saved, or of a larger storage, is saved as its own copy
    storage = t.untyped_storage()
    if storage.data_ptr() in storages or storage.nbytes() != t.numel() * t.element_size():
        t = t.clone()
        storage = t.untyped_storage()
    if t.numel():
        storages.add(storage.data_ptr())
    name = str(len(tensors))
    tensors[name] = t
    return name


# --- decoding ---------------------------------------------------------------------------
class _Malformed(Exception):
    """A node that no ``save_state`` writes; its message is the node's key path."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (non-finite floats are written as {{\"$float\": ...}})")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError(f"duplicate keys in an object: {sorted(k for k, _ in pairs if sum(k == j for j, _ in pairs) > 1)}")
    return out


def _decode(x: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if x is None or isinstance(x, (bool, str, float)):
        return x
    if type(x) is int:
        if not -_INT64 <= x < _INT64:
            raise _Malformed(f"{path}: an int beyond 64 bits written as a number")
        return x
    if isinstance(x, list):
        return [_decode(v, f"{path}[{i}]", tensors) for i, v in enumerate(x)]
    if not isinstance(x, dict):
        raise _Malformed(f"{path}: unexpected {type(x).__name__}")
    tags = [k for k in x if k.startswith("$")]
    if not tags:
        return {k: _decode(v, _key(path, k), tensors) for k, v in x.items()}
    tag = tags[0]
    if tag not in _TAGS:
        raise _Malformed(f"{path}: unknown tag {tag!r}")
    extra = set(x) - {tag, "dtype"} if tag in ("$ndarray", "$scalar") else set(x) - {tag}
    if extra or (tag in ("$ndarray", "$scalar") and "dtype" not in x):
        raise _Malformed(f"{path}: {tag} with fields {sorted(x)}")
    value = x[tag]
    if tag == "$tuple":
        if not isinstance(value, list):
            raise _Malformed(f"{path}: $tuple of a {type(value).__name__}")
        return tuple(_decode(v, f"{path}[{i}]", tensors) for i, v in enumerate(value))
    if tag == "$dict":
        if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
            raise _Malformed(f"{path}: $dict must be a list of [key, value] pairs")
        out: dict[Any, Any] = {}
        for k, v in value:
            if type(k) is not str and type(k) is not int:
                raise _Malformed(f"{path}: key {k!r} is neither str nor int")
            if k in out:
                raise _Malformed(f"{path}: duplicate key {k!r}")
            out[k] = _decode(v, _key(path, k), tensors)
        return out
    if tag == "$int":
        if not isinstance(value, str) or not _HEX.fullmatch(value):
            raise _Malformed(f"{path}: $int must be a hex string, got {str(value)[:40]!r}")
        return int(value, 16)
    if tag == "$float":
        if value not in _FLOATS:
            raise _Malformed(f"{path}: $float must be one of {sorted(_FLOATS)}, got {str(value)[:40]!r}")
        return _FLOATS[value]
    if not isinstance(value, str) or value not in tensors:
        raise _Malformed(f"{path}: {tag} refers to array {str(value)[:40]!r}, which the safetensors file "
                         "does not hold (or another node took it)")
    t = tensors.pop(value)
    if tag == "$tensor":
        if t.dtype not in _TORCH:
            raise _Malformed(f"{path}: tensor of dtype {t.dtype}")
        return t
    dtype = x["dtype"]
    if dtype not in _NUMPY or _NUMPY[dtype] != t.dtype:
        raise _Malformed(f"{path}: numpy dtype {str(dtype)[:40]!r} over stored {t.dtype}")
    array = t.numpy().view(np.dtype(dtype))
    if tag == "$scalar":
        if array.shape != ():
            raise _Malformed(f"{path}: $scalar of shape {array.shape}")
        return array[()]
    return array
