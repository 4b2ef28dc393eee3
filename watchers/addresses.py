"""Address codecs: Bitcoin validation per network and address ↔ output script; EVM (EIP-55) validation.

Validation is strict (BIP-173 bech32 for witness v0, BIP-350 bech32m for v1+, base58check) and is
cross-checked with bitcoinlib's `deserialize_address`. The script conversions are our own because the
block-mode matcher converts thousands of scripts per block and bitcoinlib is too slow for that; they
never round-trip through bitcoinlib's `Address.parse`, which rewrites taproot addresses wrongly.

EVM addresses are checked here too (eth_utils' EIP-55 checksum, without web3), so loading a config
does not import web3.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass

from eth_utils import is_checksum_address, to_checksum_address

__all__ = [
    "NETWORKS",
    "AddressInfo",
    "InvalidAddress",
    "validate_address",
    "address_to_script",
    "script_to_address",
    "script_type",
    "validate_evm_address",
]


@dataclass(frozen=True)
class _Net:
    hrp: str
    p2pkh: int
    p2sh: int


NETWORKS: dict[str, _Net] = {
    "mainnet": _Net("bc", 0x00, 0x05),
    "testnet": _Net("tb", 0x6F, 0xC4),
    "signet": _Net("tb", 0x6F, 0xC4),
    "regtest": _Net("bcrt", 0x6F, 0xC4),
}


class InvalidAddress(ValueError):
    """An address that fails its checksum, its format, or belongs to another network."""


@dataclass(frozen=True)
class AddressInfo:
    """A validated address in canonical form (bech32 lower-cased) and its output script."""

    address: str
    network: str
    type: str  # p2pkh | p2sh | p2wpkh | p2wsh | p2tr | witness_unknown
    script: bytes


# --- bech32 / bech32m (BIP-173, BIP-350 reference algorithm) ---------------------------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(_CHARSET)}
_BECH32_CONST = 1
_BECH32M_CONST = 0x2BC830A3


def _polymod(values: list[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        b = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i in range(5):
            chk ^= gen[i] if ((b >> i) & 1) else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convertbits(data, frombits: int, tobits: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    ret: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        if value < 0 or value >> frombits:
            return None
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            ret.append((acc >> bits) & maxv)
    if pad:
        if bits:
            ret.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        return None
    return ret


def _segwit_decode(addr: str) -> tuple[str, int, bytes]:
    if any(ord(c) < 33 or ord(c) > 126 for c in addr):
        raise InvalidAddress("contains characters outside the bech32 range")
    if addr.lower() != addr and addr.upper() != addr:
        raise InvalidAddress("mixes upper and lower case")
    addr = addr.lower()
    pos = addr.rfind("1")
    if pos < 1 or pos + 7 > len(addr) or len(addr) > 90:
        raise InvalidAddress("has an invalid bech32 length or separator")
    hrp = addr[:pos]
    try:
        data = [_CHARSET_REV[c] for c in addr[pos + 1 :]]
    except KeyError:
        raise InvalidAddress("contains a character that is not bech32") from None
    const = _polymod(_hrp_expand(hrp) + data)
    if const not in (_BECH32_CONST, _BECH32M_CONST):
        raise InvalidAddress("fails its bech32 checksum")
    witver = data[0]
    prog = _convertbits(data[1:-6], 5, 8, False)
    if prog is None or not 2 <= len(prog) <= 40 or witver > 16:
        raise InvalidAddress("has an invalid witness program")
    if witver == 0 and len(prog) not in (20, 32):
        raise InvalidAddress("has a witness v0 program of the wrong length")
    if (witver == 0) != (const == _BECH32_CONST):
        raise InvalidAddress("uses the wrong checksum variant (bech32 vs bech32m) for its witness version")
    return hrp, witver, bytes(prog)


def _segwit_encode(hrp: str, witver: int, prog: bytes) -> str:
    data = [witver] + (_convertbits(prog, 8, 5, True) or [])
    const = _BECH32_CONST if witver == 0 else _BECH32M_CONST
    values = _hrp_expand(hrp) + data
    polymod = _polymod(values + [0] * 6) ^ const
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


# --- base58check ----------------------------------------------------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_REV = {c: i for i, c in enumerate(_B58)}


def _sha256d(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def _b58decode_check(s: str) -> bytes:
    n = 0
    for c in s:
        if c not in _B58_REV:
            raise InvalidAddress("contains a character that is not base58")
        n = n * 58 + _B58_REV[c]
    full = n.to_bytes((n.bit_length() + 7) // 8, "big")
    full = b"\x00" * (len(s) - len(s.lstrip("1"))) + full
    if len(full) < 5 or _sha256d(full[:-4])[:4] != full[-4:]:
        raise InvalidAddress("fails its base58 checksum")
    return full[:-4]


def _b58encode_check(payload: bytes) -> str:
    full = payload + _sha256d(payload)[:4]
    n = int.from_bytes(full, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(full) - len(full.lstrip(b"\x00"))) + out


# --- public API -----------------------------------------------------------------------------------


def _bitcoinlib_check(address: str) -> None:
    # bitcoinlib writes ~/.bitcoinlib at first import unless BCL_DATA_DIR points elsewhere.
    os.environ.setdefault("BCL_DATA_DIR", os.path.join(tempfile.gettempdir(), "treasury-monitor-bitcoinlib"))
    from bitcoinlib.keys import deserialize_address

    try:
        deserialize_address(address)
    except Exception as exc:  # bitcoinlib raises its own EncodingError and plain errors alike
        raise InvalidAddress(f"is rejected by bitcoinlib ({exc})") from exc


def validate_address(address: str, network: str = "mainnet") -> AddressInfo:
    """Check an address's format, checksum and network; return its canonical form and script.

    :raises InvalidAddress: with a reason a user can act on (which network it belongs to, if another).
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}")
    if not isinstance(address, str) or not address.strip():
        raise InvalidAddress("is empty")
    addr = address.strip()
    net = NETWORKS[network]
    lowered = addr.lower()
    hrps = {n.hrp for n in NETWORKS.values()}
    hrp_guess = lowered[: lowered.rfind("1")] if "1" in lowered else ""
    if hrp_guess in hrps:
        hrp, witver, prog = _segwit_decode(addr)
        if hrp != net.hrp:
            other = [name for name, n in NETWORKS.items() if n.hrp == hrp]
            raise InvalidAddress(f"is a {'/'.join(other)} address, not {network}")
        canonical = lowered
        kind = {(0, 20): "p2wpkh", (0, 32): "p2wsh", (1, 32): "p2tr"}.get((witver, len(prog)), "witness_unknown")
        script = bytes([witver + 0x50 if witver else 0, len(prog)]) + prog
    else:
        payload = _b58decode_check(addr)
        if len(payload) != 21:
            raise InvalidAddress("has a base58 payload of the wrong length")
        version, h = payload[0], payload[1:]
        if version == net.p2pkh:
            kind, script = "p2pkh", b"\x76\xa9\x14" + h + b"\x88\xac"
        elif version == net.p2sh:
            kind, script = "p2sh", b"\xa9\x14" + h + b"\x87"
        else:
            owners = [name for name, n in NETWORKS.items() if version in (n.p2pkh, n.p2sh)]
            where = f"a {'/'.join(owners)} address" if owners else f"of unknown version byte {version}"
            raise InvalidAddress(f"is {where}, not {network}")
        canonical = addr
    # bitcoinlib validates lower-case bech32 only (upper-case fails there), hence the canonical form.
    _bitcoinlib_check(canonical)
    return AddressInfo(canonical, network, kind, script)


def address_to_script(address: str, network: str = "mainnet") -> bytes:
    """Output script (scriptPubKey) paying an address.

    :raises InvalidAddress: when the address is not valid on `network`.
    """
    return validate_address(address, network).script


def script_type(script: bytes) -> str:
    """Esplora's `scriptpubkey_type` name for a script (p2pkh, p2sh, v0_p2wpkh, v0_p2wsh, v1_p2tr, op_return, ...)."""
    n = len(script)
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "p2pkh"
    if n == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return "p2sh"
    if n == 22 and script[:2] == b"\x00\x14":
        return "v0_p2wpkh"
    if n == 34 and script[:2] == b"\x00\x20":
        return "v0_p2wsh"
    if n == 34 and script[:2] == b"\x51\x20":
        return "v1_p2tr"
    if n >= 1 and script[0] == 0x6A:
        return "op_return"
    if n in (35, 67) and script[-1] == 0xAC:
        return "p2pk"
    return "unknown"


def script_to_address(script: bytes, network: str = "mainnet") -> str | None:
    """Address an output script pays, or None for scripts with no address (OP_RETURN, bare multisig)."""
    net = NETWORKS[network]
    kind = script_type(script)
    if kind == "p2pkh":
        return _b58encode_check(bytes([net.p2pkh]) + script[3:23])
    if kind == "p2sh":
        return _b58encode_check(bytes([net.p2sh]) + script[2:22])
    if kind in ("v0_p2wpkh", "v0_p2wsh"):
        return _segwit_encode(net.hrp, 0, script[2:])
    if kind == "v1_p2tr":
        return _segwit_encode(net.hrp, 1, script[2:])
    n = len(script)
    if 4 <= n <= 42 and 0x51 <= script[0] <= 0x60 and script[1] == n - 2:
        return _segwit_encode(net.hrp, script[0] - 0x50, script[2:])
    return None


# --- EVM ---------------------------------------------------------------------------------------------

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def validate_evm_address(address: str) -> str:
    """EIP-55 checksummed form of an EVM address; all-lower/all-upper hex is accepted as is.

    :raises ValueError: when it is not 0x + 40 hex digits, or mixes cases that fail the checksum.
    """
    if not isinstance(address, str) or not _HEX_ADDRESS.fullmatch(address.strip()):
        raise ValueError(f"{address!r} is not an EVM address (0x followed by 40 hex digits)")
    address = address.strip()
    body = address[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(address):
        raise ValueError(
            f"{address} has mixed-case letters that fail its EIP-55 checksum: one character is "
            "probably wrong; copy the address again from its source"
        )
    return to_checksum_address(address)
