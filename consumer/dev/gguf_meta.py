"""Reading and rewriting GGUF metadata with the ``gguf`` package (no tensor is converted).

:func:`gguf_fields` lists a file's key/values in the form ``GGUFWriter.add_key_value``
takes; :func:`rewrite_with_metadata` copies a GGUF (tensors byte for byte) with keys filled
in from another file and keys of our own added, as llama.cpp's ``gguf_new_metadata.py``
does. Used by the synthetic models (their tokenizer comes from the bundled model) and by
fine-tuning (``llama_model_save_to_file`` writes no chat template and the training
context as the model's context length, and the provenance goes into the file).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Field", "gguf_fields", "rewrite_with_metadata"]

#: (key, value, value type, array item type or None)
Field = tuple[str, Any, Any, Any]

# Keys a writer produces itself.
_OWN = ("GGUF.", "general.architecture")


def gguf_fields(source: str | os.PathLike[str], keep: Callable[[str], bool]) -> list[Field]:
    """The key/values of ``source`` whose key ``keep`` accepts, values decoded."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    out: list[Field] = []
    for key, field in reader.fields.items():
        if key.startswith(_OWN) or not keep(key):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1] if len(field.types) > 1 else None
            if sub is None:
                out.append((key, [], vtype, None))  # an empty array has no item type
                continue
            if sub == gguf.GGUFValueType.STRING:
                value: Any = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
            out.append((key, value, vtype, sub))
        elif vtype == gguf.GGUFValueType.STRING:
            out.append((key, bytes(field.parts[field.data[0]]).decode("utf-8"), vtype, None))
        else:
            out.append((key, field.parts[field.data[0]].tolist()[0], vtype, None))
    return out


def rewrite_with_metadata(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    fill_from: str | os.PathLike[str] | None = None,
    override: Mapping[str, Any] | None = None,
) -> None:
    """Copy ``src`` to ``dst`` with every key of ``fill_from`` that ``src`` lacks (or that
    ``override`` names with the value ``None``: taken from ``fill_from``), and the string,
    int or float values of ``override`` set."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode("utf-8")
    override = dict(override or {})
    from_src = {f[0]: f for f in gguf_fields(src, lambda _k: True)}
    if fill_from is not None:
        wanted = {k for k, v in override.items() if v is None}
        for f in gguf_fields(fill_from, lambda k: k not in from_src or k in wanted):
            from_src[f[0]] = f
    writer = gguf.GGUFWriter(str(dst), arch)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, bool):
            from_src[key] = (key, value, gguf.GGUFValueType.BOOL, None)
        elif isinstance(value, int):
            # An existing key keeps its type (llama.cpp reads context_length as u32).
            vtype = from_src[key][2] if key in from_src else gguf.GGUFValueType.UINT64
            from_src[key] = (key, value, vtype, None)
        elif isinstance(value, float):
            from_src[key] = (key, value, gguf.GGUFValueType.FLOAT32, None)
        else:
            from_src[key] = (key, str(value), gguf.GGUFValueType.STRING, None)
    for key, value, vtype, sub in from_src.values():
        if vtype == gguf.GGUFValueType.ARRAY and not value:
            continue  # gguf cannot write an empty array's item type
        writer.add_key_value(key, value, vtype, sub)
    for tensor in reader.tensors:
        writer.add_tensor_info(
            tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
            tensor.tensor_type,
        )  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
