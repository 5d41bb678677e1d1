"""A crafted ``.nir`` file cannot make ``import_nir`` allocate a model or arrays of any size (issue 19): bounds are
checked on the HDF5 tree's shapes and on the ``meta`` device before anything is read or built."""

from __future__ import annotations

import h5py
import nir
import numpy as np
import pytest

from bso_lightning.interop.nir import MAX_NIR_ARRAY_BYTES, NIRExportError, import_nir, read_nir, write_nir


def _residual_graph(arch_kwargs: str) -> nir.NIRGraph:
    """Input -> two branches -> Output: not a chain, so the importer rebuilds the model its metadata names."""
    nodes = {"input": nir.Input(input_type=np.array([1, 16, 16])),
             "a": nir.Flatten(input_type={"input": np.array([1, 16, 16])}, start_dim=0, end_dim=-1),
             "b": nir.Flatten(input_type={"input": np.array([1, 16, 16])}, start_dim=0, end_dim=-1),
             "output": nir.Output(output_type=np.array([256]))}
    edges = [("input", "a"), ("input", "b"), ("a", "output"), ("b", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False,
                        metadata={"arch": "small_cnn", "arch_kwargs": arch_kwargs})


@pytest.mark.parametrize("arch_kwargs, message", [
    ('{"width": 200000}', r"arch_kwargs: small_cnn\(\*\*\{'width': 200000\}\) has 3,600,015,400,013 values, more "
                          r"than the 1,073,741,824 allowed; not built"),
    ('{"width": 20000000}', r"arch_kwargs\.width: 20000000 is out of range \[-1000000, 1000000\]"),
    ('{"depth": 3}', r"arch_kwargs\.depth: small_cnn takes no argument 'depth'"),
    ('{"width": [', r"arch_kwargs: not a JSON object"),
])
def test_arch_metadata_is_bounded_before_the_model_is_built(tmp_path, arch_kwargs, message):
    path = tmp_path / "crafted.nir"
    write_nir(_residual_graph(arch_kwargs), path)
    with pytest.raises(NIRExportError, match=rf"^{path}: metadata: {message}"):
        import_nir(path)


def test_a_compressed_array_of_any_size_is_refused_before_it_is_read(tmp_path):
    """Three zero-filled gzip chunks hold 8 GiB of float32 in a file of a few KiB: refused from its shape."""
    path = tmp_path / "bomb.nir"
    write_nir(_residual_graph('{"width": 8}'), path)
    with h5py.File(path, "a") as f:
        f["node"]["nodes"]["a"].create_dataset("weight", shape=(2**31,), dtype="float32", compression="gzip",
                                               chunks=(2**20,))
    assert path.stat().st_size < 2**20
    with pytest.raises(NIRExportError, match=rf"^{path}: /node/nodes/a/weight: an array of shape \(2147483648,\) "
                                             rf"\(float32\) brings the file's arrays to .* more than the "
                                             rf"{MAX_NIR_ARRAY_BYTES:,} allowed; not read"):
        read_nir(path)
