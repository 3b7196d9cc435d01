"""GGUF (llama.cpp) files -> (config, params) with weights dequantized to float32.

A GGUF file is read back into the Hugging Face checkpoint it was converted from (`gguf_families`:
metadata -> config.json fields, tensors -> HF tensors with llama.cpp's converter transforms undone),
and that checkpoint is read the HF way (`hf_reader.config_from_raw`, `hf_reader.params_from_tensors`),
so every family has one declaration of its parts and tensor layout. Architectures: see
`gguf_families.ARCHITECTURES` (Llama / Mistral / Mixtral, Qwen2/3, Qwen2/3-MoE, OLMoE, Gemma 1/2/3,
Phi-3, StableLM, GPT-NeoX, Falcon, BLOOM, Mamba).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from qjax.checkpoints.convert import expected_shapes
from qjax.checkpoints.errors import CheckpointError
from qjax.checkpoints.gguf_families import Meta, arch_of, check_llama3_scaling, hf_names, unpermute_rope_rows
from qjax.checkpoints.hf_reader import config_from_raw, family_of, map_tensor_names, params_from_tensors

__all__ = ["open_gguf", "read_config", "hf_checkpoint", "load_gguf", "unpermute_rope_rows", "weight_types"]


def open_gguf(path: str | Path):
    """A `gguf.GGUFReader`, with unreadable files reported as CheckpointError naming the file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: GGUF file not found")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, IndexError, struct errors on bad files
        raise CheckpointError(f"{path}: not a readable GGUF file (truncated or corrupt?): {e}") from e


def weight_types(path: str | Path) -> dict[str, int]:
    """{GGML type name (e.g. "Q4_1", "F32"): number of tensors} over the file's matrices (tensors of
    two or more dimensions): the storage grid the file's weights sit on."""
    counts: dict[str, int] = {}
    for tensor in open_gguf(path).tensors:
        if len(tensor.shape) >= 2:
            name = getattr(tensor.tensor_type, "name", str(tensor.tensor_type))
            counts[name] = counts.get(name, 0) + 1
    return counts


def metadata(reader, path: Path) -> Meta:
    """The file's metadata and tensor shapes ((out, in) order, as torch holds them)."""
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and not key.endswith("_token_id"):
            continue  # vocabularies: large, and read by the tokenizer, not here
        fields[key] = field.contents()
    shapes = {t.name: tuple(int(s) for s in reversed(t.shape)) for t in reader.tensors}
    by_name = {t.name: t for t in reader.tensors}
    return Meta(arch=fields.get("general.architecture"), fields=fields, shapes=shapes, source=str(path),
                read=lambda name: _dequantize(by_name[name], path))


def read_config(reader, path: Path):
    """The ModelConfig (MambaConfig for mamba) of an open GGUF file."""
    meta = metadata(reader, path)
    return config_from_raw(arch_of(meta.arch, str(path)).hf_config(meta), path)


def _dequantize(tensor, path: Path) -> np.ndarray:
    from gguf import quants

    shape = tuple(int(s) for s in reversed(tensor.shape))
    try:
        data = quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise CheckpointError(
            f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, which gguf cannot dequantize") from e
    except Exception as e:
        raise CheckpointError(f"{path}: tensor {tensor.name} could not be read (truncated?): {e}") from e
    if int(np.prod(data.shape)) != int(np.prod(shape)):
        raise CheckpointError(f"{path}: tensor {tensor.name} holds {data.size} values, expected {shape}")
    return np.asarray(data, np.float32).reshape(shape)


def hf_checkpoint(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json fields, HF tensors as float32 (out, in) arrays) of a GGUF file: the checkpoint
    llama.cpp's converter made it from, with its transforms undone (`gguf_families`).

    Raises CheckpointError naming the file and the tensor for an unknown architecture, a tensor the
    architecture does not have, or a tensor that cannot be read or reshaped.
    """
    _, raw, tensors, _, _ = _read(Path(path))
    return raw, tensors


def _read(path: Path):
    reader = open_gguf(path)
    meta = metadata(reader, path)
    arch = arch_of(meta.arch, str(path))
    raw = arch.hf_config(meta)
    names = hf_names(arch, meta)
    tensors: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}  # HF name -> GGUF name
    for tensor in reader.tensors:
        if tensor.name in arch.config_tensors:
            continue
        if tensor.name not in names:
            raise CheckpointError(f"{path}: tensor {tensor.name} is not part of the {meta.arch} layout qjax reads")
        hf, stacked = names[tensor.name]
        w = _dequantize(tensor, path)
        parts = [(hf.format(e=e), w[e], f"{tensor.name}[{e}]") for e in range(w.shape[0])] if stacked else [
            (hf, w, tensor.name)]
        for name, value, gguf_name in parts:
            try:
                tensors[name] = np.asarray(arch.undo(name, value, meta), np.float32)
            except ValueError as e:
                raise CheckpointError(f"{path}: tensor {gguf_name} has shape {tuple(value.shape)}, which does not fit "
                                      f"the metadata: {e}") from e
            origin[name] = gguf_name
    return meta, raw, tensors, names, origin


def _gguf_namer(raw: dict, path: Path, names: dict[str, tuple[str, bool]]):
    """qjax path -> the GGUF tensor(s) that hold it (`blk.0.ffn_up_exps.weight[3]`: expert 3 of a
    stacked tensor), for error messages."""
    family = family_of(raw, path)
    direct = {hf: g for g, (hf, stacked) in names.items() if not stacked}
    stacked = [(re.compile(re.escape(hf).replace(re.escape("{e}"), r"(\d+)")), g)
               for g, (hf, s) in names.items() if s]

    def gguf_names(hf: str) -> list:
        found = [f"{g}[{m.group(1)}]" for pattern, g in stacked if (m := pattern.fullmatch(hf))]
        return found + ([direct[hf]] if hf in direct else [])

    def name_of(qjax_path: str) -> str:
        found = [g for hf in family.hf_name(qjax_path).split(" or ") for g in gguf_names(hf)]
        return " or ".join(dict.fromkeys(found)) or qjax_path

    return name_of


def load_gguf(path: str | Path) -> tuple:
    """(config, params) of a GGUF file: config from its metadata, every tensor dequantized to
    float32 and placed in the qjax layout of its family (`qjax.models.decoder`, `qjax.models.mamba`).

    Raises CheckpointError naming the file and the problem: unreadable file, unknown architecture,
    missing metadata, a missing tensor or one whose shape disagrees with the metadata (named by
    its GGUF name).
    """
    path = Path(path)
    meta, raw, tensors, names, origin = _read(path)
    config = config_from_raw(raw, path)
    if meta.has("rope_freqs.weight"):
        check_llama3_scaling(config, meta.read("rope_freqs.weight"), str(path))
    expected = expected_shapes(config)
    used = map_tensor_names(tensors, family_of(raw, path), path)
    for name in tensors:  # a tensor the config leaves unused (a q/k norm of a model without them) is an error
        if used.get(name) not in expected:
            raise CheckpointError(f"{path}: tensor {origin[name]} is not used by the "
                                  f"{raw['architectures'][0]} model its metadata describes")
    return config, params_from_tensors(tensors, raw, config, str(path), _gguf_namer(raw, path, names))
