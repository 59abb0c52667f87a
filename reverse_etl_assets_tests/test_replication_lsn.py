"""LSN text form <-> integer."""

from __future__ import annotations

import pytest

from reverse_etl_assets.postgres.replication.lsn import format_lsn, parse_lsn


def test_parse_lsn_combines_high_and_low_words() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert parse_lsn("0/0") == 0
    assert parse_lsn("ffffffff/ffffffff") == (1 << 64) - 1


def test_format_lsn_matches_postgres_text_form() -> None:
    assert format_lsn((0x16 << 32) | 0xB374D848) == "16/B374D848"
    assert format_lsn(0) == "0/0"
    assert format_lsn(0x1000000) == "0/1000000"


def test_round_trip() -> None:
    for value in (0, 1, 0xFFFFFFFF, 1 << 32, 0x0123456789ABCDEF, (1 << 64) - 1):
        assert parse_lsn(format_lsn(value)) == value


@pytest.mark.parametrize("text", ["", "16", "16/", "/1", "zz/1", "1/2/3", "123456789/0"])
def test_parse_lsn_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn(text)


def test_format_lsn_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        format_lsn(-1)
    with pytest.raises(ValueError):
        format_lsn(1 << 64)
