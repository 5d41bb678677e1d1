"""The one bit packer (``nn.packed.pack_bits`` / ``unpack_signs``) that the optimizer's flips, packed layers and the
export format share: ``numpy.packbits`` order, any length, any input offset, and unpacking into a buffer."""

import numpy as np
import pytest
import torch

from bso_lightning.nn.packed import pack_bits, unpack_signs


@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 17, 1000])
def test_pack_bits_is_numpy_packbits_for_bool_and_uint8(n):
    gen = torch.Generator().manual_seed(n)
    mask = torch.randint(0, 2, (n,), generator=gen).bool()
    expected = torch.from_numpy(np.packbits(mask.numpy()))
    assert torch.equal(pack_bits(mask), expected)
    assert torch.equal(pack_bits(mask.to(torch.uint8)), expected)
    assert torch.equal(pack_bits(mask.view(1, n)), expected)  # any shape: C order


def test_pack_bits_of_a_view_at_an_unaligned_offset():
    mask = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(0)).bool()
    view = mask[3:43]  # storage offset 3: not a whole int64 word
    assert torch.equal(pack_bits(view), torch.from_numpy(np.packbits(view.numpy())))


def test_pack_bits_refuses_other_dtypes():
    with pytest.raises(ValueError, match="pack_bits takes a bool or 0/1 uint8 tensor"):
        pack_bits(torch.ones(8))


def test_unpack_signs_into_a_buffer_equals_the_new_tensor():
    signs = torch.randint(0, 2, (3, 7), generator=torch.Generator().manual_seed(1)).float() * 2 - 1
    bits = pack_bits(signs > 0)
    out = torch.full((32,), 5.0)  # 3 bytes: 24 entries written, 21 returned
    got = unpack_signs(bits, signs.shape, out=out)
    assert torch.equal(got, signs) and got.data_ptr() == out.data_ptr()
    assert torch.equal(unpack_signs(bits, signs.shape), signs)
