"""Local Bitcoin Core JSON-RPC server over a SimChain (aiohttp), with the answer shapes of Core 25+.

Methods: `getblockchaininfo`, `getnetworkinfo`, `getbestblockhash`, `getblockcount`, `getblockhash`,
`getblock` (verbosity 0-3), `getrawmempool`, `getrawtransaction` (verbosity 0-2, optional blockhash),
`gettxout`, `getmempoolentry`. Single requests and batches (a JSON array) are answered as Core does:

- amounts are JSON numbers in BTC written with exactly 8 decimals (Core's `ValueFromAmount`);
- `scriptPubKey` is `{asm, desc, hex, address?, type}` (Core's `ScriptToUniv`: no `address` for P2PK;
  `desc` is the inferred descriptor with its checksum, `addr(...)`, `rawtr(...)`, `pk(...)` or `raw(...)`);
- asm is Core's `ScriptToAsmStr` (small pushes as numbers, `[ALL]` after DER signatures in scriptSigs);
- `getblock <hash> 3` gives every non-coinbase input a `prevout` {generated, height, value,
  scriptPubKey} and every non-coinbase tx a `fee`, for blocks of the best chain (as Core: stale blocks
  have no undo data in reach, so they get neither);
- `getrawtransaction <txid> 2` gives prevouts and fee only for confirmed txs (Core reads them from the
  block's undo data; a mempool tx comes back in the verbosity-1 shape, as Core 25-29 do);
- a failed single request is answered with HTTP 500 (404 for an unknown method) and the body
  `{"result": null, "error": {"code", "message"}, "id"}` (Core's legacy JSON-RPC 1.0 replies); with
  `"jsonrpc": "2.0"` and version >= 28.0 the status is 200, as in Core 28+. Batches are always 200.

Emulated node settings (attributes, changeable while serving):
- `version` (default 250000). Below 230000 the node predates verbosity 3: `getblock` treats any
  verbosity >= 2 as 2 (no prevouts, no fee) without an error, exactly as Core 22 and older do.
  Below 250000 `getrawtransaction` treats any non-zero verbosity as `true` (the verbosity-1 shape).
- `ibd` / `verification_progress`: `getblockchaininfo` reports initial block download.
- `warmup`: a message (e.g. "Loading block index…"); every method fails with -28 while it is set.
- `txindex`: whether `getrawtransaction` finds confirmed txs without a block hash.
- auth: `user`/`password` and/or a cookie file (`cookie_path`, written on start as Core writes
  `<datadir>/.cookie`); anything else is answered 401 with an empty body. `user=None` and no cookie
  disables auth (as bcoin's `--no-auth`).
- faults: `busy(n)` answers the next n HTTP requests 503 "Work queue depth exceeded" (Core's
  `-rpcworkqueue` overflow); `drop(n)` closes the next n connections without an answer; `mutate` is a
  hook `(method, params, result) -> result` that can rewrite any answer (use `RawNumber` for numbers
  Core would never write).

`calls` records `(method, params)` of every RPC call and `requests` counts HTTP requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from monitor.sim.chain import (
    COIN,
    SimBlock,
    SimChain,
    SimTx,
    SimTxOut,
    script_ops,
    target_from_bits,
)

__all__ = [
    "BitcoindServer",
    "RawNumber",
    "RpcFault",
    "CHAIN_NAMES",
    "core_asm",
    "core_script_type",
    "core_descriptor",
    "descriptor_checksum",
    "script_pubkey_json",
    "format_version",
]

#: SimChain network → the `chain` name getblockchaininfo reports.
CHAIN_NAMES = {"mainnet": "main", "testnet": "test", "signet": "signet", "regtest": "regtest"}

# Core's RPC error codes used here (src/rpc/protocol.h).
RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_IN_WARMUP = -28
RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_PARSE_ERROR = -32700


class RawNumber:
    """A JSON number written exactly as given (for answers Core would never produce, e.g. 9 decimals)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"RawNumber({self.text!r})"


class _Btc:
    """An amount in satoshis, written as Core's ValueFromAmount writes BTC: `1.50000000`."""

    __slots__ = ("sats",)

    def __init__(self, sats: int):
        self.sats = sats

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Btc) and other.sats == self.sats

    def __repr__(self) -> str:
        return f"_Btc({self.sats})"


class RpcFault(Exception):
    """A JSON-RPC error the handler answers with (`code`, `message`)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _double(value: float) -> str:
    # UniValue writes doubles with std::setprecision(16).
    text = format(value, ".16g")
    return text if text not in ("inf", "-inf", "nan") else "null"


def _dump(value: Any) -> str:
    """JSON text of an answer; `_Btc` and `RawNumber` are written as bare numbers."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, _Btc):
        sign = "-" if value.sats < 0 else ""
        q, r = divmod(abs(value.sats), COIN)
        return f"{sign}{q}.{r:08d}"
    if isinstance(value, RawNumber):
        return value.text
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _double(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + _dump(v) for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def format_version(version: int) -> str:
    """Core's integer version as people write it: 250100 → '25.1', 240000 → '24.0', 210100 → '0.21.1'."""
    major, minor, patch = version // 10000, version // 100 % 100, version % 100
    if major < 22:
        return f"0.{major}.{minor}" if not patch else f"0.{major}.{minor}.{patch}"
    return f"{major}.{minor}" if not patch else f"{major}.{minor}.{patch}"


# --- scripts as Core renders them -------------------------------------------------------------------

_OP_NAMES: dict[int, str] = {
    0x00: "0",
    0x4C: "OP_PUSHDATA1",
    0x4D: "OP_PUSHDATA2",
    0x4E: "OP_PUSHDATA4",
    0x4F: "-1",
    0x50: "OP_RESERVED",
}
for _n in range(1, 17):
    _OP_NAMES[0x50 + _n] = str(_n)
for _i, _name in enumerate(
    "OP_NOP OP_VER OP_IF OP_NOTIF OP_VERIF OP_VERNOTIF OP_ELSE OP_ENDIF OP_VERIFY OP_RETURN OP_TOALTSTACK "
    "OP_FROMALTSTACK OP_2DROP OP_2DUP OP_3DUP OP_2OVER OP_2ROT OP_2SWAP OP_IFDUP OP_DEPTH OP_DROP OP_DUP OP_NIP "
    "OP_OVER OP_PICK OP_ROLL OP_ROT OP_SWAP OP_TUCK OP_CAT OP_SUBSTR OP_LEFT OP_RIGHT OP_SIZE OP_INVERT OP_AND "
    "OP_OR OP_XOR OP_EQUAL OP_EQUALVERIFY OP_RESERVED1 OP_RESERVED2 OP_1ADD OP_1SUB OP_2MUL OP_2DIV OP_NEGATE "
    "OP_ABS OP_NOT OP_0NOTEQUAL OP_ADD OP_SUB OP_MUL OP_DIV OP_MOD OP_LSHIFT OP_RSHIFT OP_BOOLAND OP_BOOLOR "
    "OP_NUMEQUAL OP_NUMEQUALVERIFY OP_NUMNOTEQUAL OP_LESSTHAN OP_GREATERTHAN OP_LESSTHANOREQUAL "
    "OP_GREATERTHANOREQUAL OP_MIN OP_MAX OP_WITHIN OP_RIPEMD160 OP_SHA1 OP_SHA256 OP_HASH160 OP_HASH256 "
    "OP_CODESEPARATOR OP_CHECKSIG OP_CHECKSIGVERIFY OP_CHECKMULTISIG OP_CHECKMULTISIGVERIFY OP_NOP1 "
    "OP_CHECKLOCKTIMEVERIFY OP_CHECKSEQUENCEVERIFY OP_NOP4 OP_NOP5 OP_NOP6 OP_NOP7 OP_NOP8 OP_NOP9 OP_NOP10 "
    "OP_CHECKSIGADD".split()
):
    _OP_NAMES[0x61 + _i] = _name
_OP_NAMES[0xFF] = "OP_INVALIDOPCODE"
_SIGHASH_NAMES = {
    0x01: "ALL",
    0x81: "ALL|ANYONECANPAY",
    0x02: "NONE",
    0x82: "NONE|ANYONECANPAY",
    0x03: "SINGLE",
    0x83: "SINGLE|ANYONECANPAY",
}


def _script_num(data: bytes) -> int:
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def _is_der_signature(sig: bytes) -> bool:
    # BIP-66 IsValidSignatureEncoding, as Core's interpreter checks it.
    n = len(sig)
    if n < 9 or n > 73 or sig[0] != 0x30 or sig[1] != n - 3:
        return False
    len_r = sig[3]
    if 5 + len_r >= n:
        return False
    len_s = sig[5 + len_r]
    if len_r + len_s + 7 != n or sig[2] != 0x02 or len_r == 0 or sig[4] & 0x80:
        return False
    if len_r > 1 and sig[4] == 0 and not sig[5] & 0x80:
        return False
    if sig[len_r + 4] != 0x02 or len_s == 0 or sig[len_r + 6] & 0x80:
        return False
    return not (len_s > 1 and sig[len_r + 6] == 0 and not sig[len_r + 7] & 0x80)


def core_asm(script: bytes, sighash_decode: bool = False) -> str:
    """Core's ScriptToAsmStr: `OP_DUP OP_HASH160 <hex> ...`; with `sighash_decode` DER signatures end in `[ALL]`."""
    parts: list[str] = []
    unspendable = (bool(script) and script[0] == 0x6A) or len(script) > 10_000
    for op, data in script_ops(script):
        if data is None:
            parts.append("[error]")
            break
        if op <= 0x4E:
            if len(data) <= 4:
                parts.append(str(_script_num(data)))
            elif sighash_decode and not unspendable and _is_der_signature(data) and data[-1] in _SIGHASH_NAMES:
                parts.append(data[:-1].hex() + f"[{_SIGHASH_NAMES[data[-1]]}]")
            else:
                parts.append(data.hex())
        else:
            parts.append(_OP_NAMES.get(op, "OP_UNKNOWN"))
    return " ".join(parts)


def _is_pubkey(data: bytes) -> bool:
    return (len(data) == 33 and data[0] in (2, 3)) or (len(data) == 65 and data[0] == 4)


def _bare_multisig(script: bytes) -> tuple[int, list[bytes]] | None:
    ops = list(script_ops(script))
    if len(ops) < 4 or ops[-1][0] != 0xAE or any(d is None for _, d in ops):
        return None
    m_op, n_op = ops[0][0], ops[-2][0]
    if not (0x51 <= m_op <= 0x60 and 0x51 <= n_op <= 0x60):  # type: ignore[operator]
        return None
    keys = [d for op, d in ops[1:-2]]
    if len(keys) != n_op - 0x50 or not all(d is not None and _is_pubkey(d) for d in keys):  # type: ignore[operator]
        return None
    return m_op - 0x50, keys  # type: ignore[operator,return-value]


def core_script_type(script: bytes) -> str:
    """Core's `type` of an output script (GetTxnOutputType): pubkeyhash, witness_v0_keyhash, nulldata, ..."""
    n = len(script)
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "pubkeyhash"
    if n == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return "scripthash"
    if 4 <= n <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60) and script[1] == n - 2:
        version = 0 if script[0] == 0 else script[0] - 0x50
        if version == 0 and n == 22:
            return "witness_v0_keyhash"
        if version == 0 and n == 34:
            return "witness_v0_scripthash"
        if version == 1 and n == 34:
            return "witness_v1_taproot"
        if version != 0:
            return "witness_unknown"
        return "nonstandard"
    if n >= 1 and script[0] == 0x6A and all(d is not None and op <= 0x60 for op, d in script_ops(script[1:])):
        return "nulldata"
    if n in (35, 67) and script[-1] == 0xAC and _is_pubkey(script[1:-1]) and script[0] == n - 2:
        return "pubkey"
    if _bare_multisig(script) is not None:
        return "multisig"
    return "nonstandard"


_DESC_INPUT_CHARSET = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
_DESC_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_DESC_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def descriptor_checksum(desc: str) -> str:
    """The 8-character checksum of an output descriptor (BIP-380; Core's DescriptorChecksum)."""
    symbols: list[int] = []
    groups: list[int] = []
    for c in desc:
        v = _DESC_INPUT_CHARSET.find(c)
        if v < 0:
            raise ValueError(f"character {c!r} cannot appear in a descriptor")
        symbols.append(v & 31)
        groups.append(v >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    chk = 1
    for value in symbols + [0] * 8:
        top = chk >> 35
        chk = ((chk & 0x7FFFFFFFF) << 5) ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _DESC_GENERATOR[i]
    chk ^= 1
    return "".join(_DESC_CHECKSUM_CHARSET[(chk >> (5 * (7 - i))) & 31] for i in range(8))


_SECP_P = 2**256 - 2**32 - 977


def _on_curve_x(x: bytes) -> bool:
    # XOnlyPubKey::IsFullyValid: x < p and x^3 + 7 is a square mod p.
    v = int.from_bytes(x, "big")
    if v >= _SECP_P:
        return False
    y2 = (pow(v, 3, _SECP_P) + 7) % _SECP_P
    return y2 == 0 or pow(y2, (_SECP_P - 1) // 2, _SECP_P) == 1


def core_descriptor(script: bytes, address: str | None) -> str:
    """Core's InferDescriptor for a script with no key information, with its checksum."""
    kind = core_script_type(script)
    if kind == "pubkey":
        body = f"pk({script[1:-1].hex()})"
    elif kind == "witness_v1_taproot" and _on_curve_x(script[2:]):
        body = f"rawtr({script[2:].hex()})"
    elif kind == "multisig":
        m, keys = _bare_multisig(script)  # type: ignore[misc]
        body = f"multi({m}," + ",".join(k.hex() for k in keys) + ")"
    elif address is not None:
        body = f"addr({address})"
    else:
        body = f"raw({script.hex()})"
    return f"{body}#{descriptor_checksum(body)}"


def script_pubkey_json(script: bytes, address: str | None, version: int = 250000) -> dict[str, Any]:
    """Core's `scriptPubKey` object: asm, desc (23.0+), hex, address (absent for P2PK and no-address scripts), type."""
    kind = core_script_type(script)
    out: dict[str, Any] = {"asm": core_asm(script)}
    if version >= 230000:
        out["desc"] = core_descriptor(script, address if kind != "pubkey" else None)
    out["hex"] = script.hex()
    if version < 220000:
        # Before 22.0: reqSigs + addresses (a list) instead of address.
        if address is not None and kind != "pubkey":
            out["reqSigs"] = 1
            out["type"] = kind
            out["addresses"] = [address]
            return out
    elif address is not None and kind != "pubkey":
        out["address"] = address
    out["type"] = kind
    return out


# --- the server ---------------------------------------------------------------------------------------


@dataclass
class _Undo:
    """What a block's undo data would say about one spent output."""

    out: SimTxOut
    height: int
    generated: bool


class BitcoindServer:
    """Serve `chain` as Bitcoin Core's JSON-RPC: `async with BitcoindServer(chain, user=..., password=...) as node`."""

    def __init__(
        self,
        chain: SimChain,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        version: int = 250000,
        user: str | None = "rpcuser",
        password: str | None = "rpcpassword",
        cookie_path: str | Path | None = None,
        txindex: bool = False,
        ibd: bool = False,
        verification_progress: float = 0.9999987,
        warmup: str | None = None,
        mutate: Callable[[str, list, Any], Any] | None = None,
    ):
        self.chain = chain
        self.host = host
        self.port = port
        self.version = version
        self.user = user
        self.password = password
        self.cookie_path = Path(cookie_path) if cookie_path is not None else None
        self.cookie: str | None = None
        self.txindex = txindex
        self.ibd = ibd
        self.verification_progress = verification_progress
        self.warmup = warmup
        self.mutate = mutate
        self.calls: list[tuple[str, list]] = []
        self.requests = 0
        self._busy = 0
        self._drop = 0
        self._runner: web.AppRunner | None = None
        self._tx_cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._coins_version = -1
        self._spent_confirmed: dict[tuple[str, int], str] = {}
        self._spent_mempool: dict[tuple[str, int], str] = {}
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (no credentials)."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> BitcoindServer:
        """Bind (port 0 picks a free one), write the cookie file if asked, serve."""
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        if self.cookie_path is not None:
            await asyncio.to_thread(self.rotate_cookie)  # a file write: off the loop
        return self

    def rotate_cookie(self) -> str:
        """Write a new `__cookie__:<hex>` to `cookie_path` (as Core does at each start); returns it."""
        if self.cookie_path is None:
            raise ValueError("no cookie_path")
        self.cookie = f"__cookie__:{secrets.token_hex(32)}"
        self.cookie_path.write_text(self.cookie)
        return self.cookie

    async def stop(self) -> None:
        """Stop serving (and remove the cookie file, as Core does on shutdown)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.cookie_path is not None:
            await asyncio.to_thread(self.cookie_path.unlink, missing_ok=True)

    async def __aenter__(self) -> BitcoindServer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def busy(self, n: int = 1) -> None:
        """Answer the next `n` HTTP requests with 503 "Work queue depth exceeded"."""
        self._busy += n

    def drop(self, n: int = 1) -> None:
        """Close the next `n` connections without answering."""
        self._drop += n

    @property
    def methods(self) -> list[str]:
        """Methods called so far, in order."""
        return [m for m, _ in self.calls]

    # --- HTTP ---------------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        if self.user is None and self.cookie is None:
            return True
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        allowed = []
        if self.user is not None:
            allowed.append(f"{self.user}:{self.password or ''}")
        if self.cookie is not None:
            allowed.append(self.cookie)
        return any(secrets.compare_digest(given, a) for a in allowed)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self._drop > 0:
            self._drop -= 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=200)
        if request.method != "POST":
            return web.Response(status=405)
        if not self._authorized(request):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'})
        if request.path != "/" and not request.path.startswith("/wallet/"):
            return web.Response(status=404)
        if self._busy > 0:
            self._busy -= 1
            return web.Response(status=503, text="Work queue depth exceeded")
        body = await request.read()
        try:
            req = json.loads(body)
        except ValueError:
            return self._reply_one({"id": None}, None, RpcFault(RPC_PARSE_ERROR, "Parse error"))
        if isinstance(req, list):
            replies = []
            for item in req:
                if not isinstance(item, dict):
                    replies.append(
                        {"result": None, "error": {"code": RPC_INVALID_REQUEST, "message": "Invalid Request object"}, "id": None}
                    )
                    continue
                result, fault = self._call(item)
                replies.append(self._reply_obj(item, result, fault))
            return web.Response(body=_dump(replies) + "\n", content_type="application/json")
        if not isinstance(req, dict):
            return self._reply_one({"id": None}, None, RpcFault(RPC_INVALID_REQUEST, "Invalid Request object"))
        result, fault = self._call(req)
        return self._reply_one(req, result, fault)

    def _json2(self, req: dict) -> bool:
        return self.version >= 280000 and req.get("jsonrpc") == "2.0"

    def _reply_obj(self, req: dict, result: Any, fault: RpcFault | None) -> dict[str, Any]:
        error = {"code": fault.code, "message": fault.message} if fault else None
        if self._json2(req):
            return {"jsonrpc": "2.0", **({"error": error} if fault else {"result": result}), "id": req.get("id")}
        return {"result": result if fault is None else None, "error": error, "id": req.get("id")}

    def _reply_one(self, req: dict, result: Any, fault: RpcFault | None) -> web.Response:
        status = 200
        if fault is not None and not self._json2(req):
            status = {RPC_INVALID_REQUEST: 400, RPC_METHOD_NOT_FOUND: 404}.get(fault.code, 500)
        return web.Response(
            status=status, body=_dump(self._reply_obj(req, result, fault)) + "\n", content_type="application/json"
        )

    def _call(self, req: dict) -> tuple[Any, RpcFault | None]:
        method = req.get("method")
        params = req.get("params", [])
        if not isinstance(method, str):
            return None, RpcFault(RPC_INVALID_REQUEST, "Method must be a string")
        if params is None:
            params = []
        if not isinstance(params, list):
            return None, RpcFault(RPC_INVALID_REQUEST, "Params must be an array or object")
        self.calls.append((method, list(params)))
        handler = getattr(self, f"_rpc_{method}", None)
        if handler is None:
            return None, RpcFault(RPC_METHOD_NOT_FOUND, "Method not found")
        if self.warmup is not None:
            return None, RpcFault(RPC_IN_WARMUP, self.warmup)
        try:
            result = handler(*params)
        except RpcFault as fault:
            return None, fault
        except TypeError:
            return None, RpcFault(RPC_MISC_ERROR, f"{method} called with the wrong number of parameters")
        if self.mutate is not None:
            result = self.mutate(method, list(params), result)
        return result, None

    # --- argument checks ------------------------------------------------------------------------------

    @staticmethod
    def _hash(value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise RpcFault(RPC_TYPE_ERROR, f"JSON value of type {_type_name(value)} is not of expected type string")
        if len(value) != 64:
            raise RpcFault(RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')")
        if any(c not in "0123456789abcdefABCDEF" for c in value):
            raise RpcFault(RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')")
        return value.lower()

    @staticmethod
    def _int(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RpcFault(RPC_TYPE_ERROR, f"JSON value of type {_type_name(value)} is not of expected type number")
        return value

    @staticmethod
    def _verbosity(value: Any, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, bool):
            return int(value)
        return BitcoindServer._int(value)

    # --- chain views ------------------------------------------------------------------------------------

    def _tip(self) -> SimBlock:
        tip = self.chain.tip
        if tip is None:
            raise RpcFault(RPC_MISC_ERROR, "the simulated chain has no blocks yet")
        return tip

    def _coins(self) -> None:
        """Index which outputs are spent by confirmed txs and which by mempool txs (rebuilt on change)."""
        if self._coins_version == self.chain.version:
            return
        confirmed: dict[tuple[str, int], str] = {}
        mempool: dict[tuple[str, int], str] = {}
        for block in self.chain.blocks:
            for tx in block.txs:
                for i in tx.vin:
                    if not i.is_coinbase:
                        confirmed[(i.txid, i.vout)] = tx.txid
        for tx in self.chain.mempool:
            for i in tx.vin:
                mempool[(i.txid, i.vout)] = tx.txid
        self._spent_confirmed, self._spent_mempool = confirmed, mempool
        self._coins_version = self.chain.version

    def _undo(self, txid: str, vout: int) -> _Undo | None:
        out = self.chain.prevout(txid, vout)
        if out is None:
            return None
        parent = self.chain.any_tx(txid)
        status = self.chain.tx_status(txid)
        if parent is None:  # a pre-history output of the faucet
            return _Undo(out, self.chain.start_height - 1, False)
        height = status.block_height if status is not None else self.chain.height + 1
        return _Undo(out, height, parent.is_coinbase)

    def _chainwork(self, block: SimBlock) -> str:
        # Pre-history work is approximated as start_height blocks at the first block's difficulty.
        first = self.chain.block_at(self.chain.start_height) or block
        work = (2**256 // (target_from_bits(first.bits) + 1)) * (self.chain.start_height - 1)
        b: SimBlock | None = block
        while b is not None:
            work += 2**256 // (target_from_bits(b.bits) + 1)
            b = self.chain.block_by_hash(b.prev_hash)
        return f"{work:064x}"

    # --- JSON shapes -------------------------------------------------------------------------------------

    def _tx_json(self, tx: SimTx, mode: str) -> dict[str, Any]:
        """TxToUniv: mode "plain" (no undo), "fee" (undo data: fee), "prevout" (fee and prevouts)."""
        key = (tx.txid, mode)
        hit = self._tx_cache.get(key)
        if hit is not None:
            return hit
        undo = mode != "plain" and not tx.is_coinbase
        vin = []
        total_in = 0
        for i in tx.vin:
            d: dict[str, Any] = {}
            if i.is_coinbase:
                d["coinbase"] = i.script_sig.hex()
            else:
                d["txid"] = i.txid
                d["vout"] = i.vout
                d["scriptSig"] = {"asm": core_asm(i.script_sig, sighash_decode=True), "hex": i.script_sig.hex()}
            if i.witness:
                d["txinwitness"] = [w.hex() for w in i.witness]
            if undo:
                u = self._undo(i.txid, i.vout)
                assert u is not None, f"no prevout for {i.txid}:{i.vout}"
                total_in += u.out.value
                if mode == "prevout":
                    d["prevout"] = {
                        "generated": u.generated,
                        "height": u.height,
                        "value": _Btc(u.out.value),
                        "scriptPubKey": script_pubkey_json(u.out.script, u.out.address, self.version),
                    }
            d["sequence"] = i.sequence
            vin.append(d)
        vout = [
            {"value": _Btc(o.value), "n": n, "scriptPubKey": script_pubkey_json(o.script, o.address, self.version)}
            for n, o in enumerate(tx.vout)
        ]
        out: dict[str, Any] = {
            "txid": tx.txid,
            "hash": tx.wtxid,
            "version": tx.version,
            "size": tx.size,
            "vsize": tx.vsize,
            "weight": tx.weight,
            "locktime": tx.locktime,
            "vin": vin,
            "vout": vout,
        }
        if undo:
            out["fee"] = _Btc(total_in - sum(o.value for o in tx.vout))
        self._tx_cache[key] = out
        return out

    def _header_json(self, block: SimBlock) -> dict[str, Any]:
        tip = self._tip()
        best = self.chain.is_best(block)
        nxt = self.chain.next_best(block) if best else None
        out: dict[str, Any] = {
            "hash": block.hash,
            "confirmations": tip.height - block.height + 1 if best else -1,
            "height": block.height,
            "version": block.version,
            "versionHex": f"{block.version:08x}",
            "merkleroot": block.merkle_root,
            "time": block.time,
            "mediantime": block.median_time,
            "nonce": block.nonce,
            "bits": f"{block.bits:08x}",
            "difficulty": block.difficulty,
            "chainwork": self._chainwork(block),
            "nTx": block.tx_count,
            "previousblockhash": block.prev_hash,
        }
        if nxt is not None:
            out["nextblockhash"] = nxt.hash
        return out

    # --- methods -------------------------------------------------------------------------------------------

    def _rpc_getblockchaininfo(self) -> dict[str, Any]:
        tip = self._tip()
        size = sum(b.size for b in self.chain.blocks)
        return {
            "chain": CHAIN_NAMES[self.chain.network],
            "blocks": tip.height,
            "headers": tip.height + (1_000 if self.ibd else 0),
            "bestblockhash": tip.hash,
            "difficulty": tip.difficulty,
            "time": tip.time,
            "mediantime": tip.median_time,
            "verificationprogress": self.verification_progress if self.ibd else 0.9999987,
            "initialblockdownload": self.ibd,
            "chainwork": self._chainwork(tip),
            "size_on_disk": size,
            "pruned": False,
            "warnings": [] if self.version >= 280000 else "",
        }

    def _rpc_getnetworkinfo(self) -> dict[str, Any]:
        v = self.version
        return {
            "version": v,
            "subversion": f"/Satoshi:{format_version(v) if v < 220000 else f'{v // 10000}.{v // 100 % 100}.{v % 100}'}/",
            "protocolversion": 70016,
            "localservices": "0000000000000409",
            "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED"],
            "localrelay": True,
            "timeoffset": 0,
            "networkactive": True,
            "connections": 10,
            "connections_in": 0,
            "connections_out": 10,
            "networks": [
                {"name": n, "limited": n != "ipv4", "reachable": n == "ipv4", "proxy": "", "proxy_randomize_credentials": False}
                for n in ("ipv4", "ipv6", "onion", "i2p", "cjdns")
            ],
            "relayfee": _Btc(1_000),
            "incrementalfee": _Btc(1_000),
            "localaddresses": [],
            "warnings": [] if v >= 280000 else "",
        }

    def _rpc_getbestblockhash(self) -> str:
        return self._tip().hash

    def _rpc_getblockcount(self) -> int:
        return self._tip().height

    def _rpc_getblockhash(self, height: Any) -> str:
        h = self._int(height)
        block = self.chain.block_at(h)
        if block is None:
            raise RpcFault(RPC_INVALID_PARAMETER, "Block height out of range")
        return block.hash

    def _rpc_getblock(self, blockhash: Any, verbosity: Any = None) -> Any:
        h = self._hash(blockhash, "blockhash")
        level = self._verbosity(verbosity, 1)
        block = self.chain.block_by_hash(h)
        if block is None:
            raise RpcFault(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
        if level <= 0:
            return block.raw().hex()
        out = self._header_json(block)
        out["strippedsize"] = block.size - sum(t.size - t.base_size for t in block.txs)
        out["size"] = block.size
        out["weight"] = block.weight
        if level == 1:
            out["tx"] = block.txids
            return out
        if self.version < 230000:
            mode = "plain"  # Core 22 and older: verbosity >= 2 is 2, without fee or prevouts
        elif not self.chain.is_best(block):
            mode = "plain"  # no undo data in reach for a block outside the best chain
        else:
            mode = "fee" if level == 2 else "prevout"
        out["tx"] = [{**self._tx_json(t, mode), "hex": t.hex} for t in block.txs]
        return out

    def _rpc_getrawmempool(self, verbose: Any = False, mempool_sequence: Any = False) -> Any:
        if verbose:
            return {t.txid: self._mempool_entry(t) for t in self.chain.mempool}
        txids = [t.txid for t in self.chain.mempool]
        if mempool_sequence:
            return {"txids": txids, "mempool_sequence": self.chain.version}
        return txids

    def _mempool_entry(self, tx: SimTx) -> dict[str, Any]:
        self._coins()
        in_mempool = {t.txid for t in self.chain.mempool}
        depends = sorted({i.txid for i in tx.vin if i.txid in in_mempool})
        spentby = sorted({s for (t, _), s in self._spent_mempool.items() if t == tx.txid})
        tip = self._tip()
        return {
            "vsize": tx.vsize,
            "weight": tx.weight,
            "time": tip.time,
            "height": tip.height,
            "descendantcount": 1,
            "descendantsize": tx.vsize,
            "ancestorcount": 1 + len(depends),
            "ancestorsize": tx.vsize,
            "wtxid": tx.wtxid,
            "fees": {"base": _Btc(tx.fee), "modified": _Btc(tx.fee), "ancestor": _Btc(tx.fee), "descendant": _Btc(tx.fee)},
            "depends": depends,
            "spentby": spentby,
            "bip125-replaceable": any(i.sequence < 0xFFFFFFFE for i in tx.vin),
            "unbroadcast": False,
        }

    def _rpc_getmempoolentry(self, txid: Any) -> dict[str, Any]:
        t = self._hash(txid, "parameter 1")
        if not self.chain.in_mempool(t):
            raise RpcFault(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
        tx = self.chain.tx(t)
        assert tx is not None
        return self._mempool_entry(tx)

    def _rpc_getrawtransaction(self, txid: Any, verbosity: Any = None, blockhash: Any = None) -> Any:
        t = self._hash(txid, "parameter 1")
        level = self._verbosity(verbosity, 0)
        if self.version < 250000 and level > 1:
            level = 1  # Core 24 and older: any non-zero verbosity means `true`
        block: SimBlock | None = None
        if blockhash is not None:
            block = self.chain.block_by_hash(self._hash(blockhash, "parameter 3"))
            if block is None:
                raise RpcFault(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found")
            tx = next((x for x in block.txs if x.txid == t), None)
            if tx is None:
                raise RpcFault(
                    RPC_INVALID_ADDRESS_OR_KEY,
                    "No such transaction found in the provided block. Use gettransaction for wallet transactions.",
                )
        else:
            tx = self.chain.tx(t)
            if tx is not None and not self.chain.in_mempool(t):
                if not self.txindex:
                    tx = None
                else:
                    pos = self.chain.tx_position(t)
                    block = pos[0] if pos else None
            if tx is None:
                msg = (
                    "No such mempool or blockchain transaction"
                    if self.txindex
                    else "No such mempool transaction. Use -txindex or provide a block hash to enable blockchain transaction queries"
                )
                raise RpcFault(RPC_INVALID_ADDRESS_OR_KEY, msg + ". Use gettransaction for wallet transactions.")
        if level <= 0:
            return tx.hex
        out: dict[str, Any] = {}
        if blockhash is not None:
            out["in_active_chain"] = block is not None and self.chain.is_best(block)
        best = block is not None and self.chain.is_best(block)
        mode = "prevout" if level >= 2 and best and not tx.is_coinbase else "plain"
        out.update(self._tx_json(tx, mode))
        out["hex"] = tx.hex
        if block is not None:
            out["blockhash"] = block.hash
            if best:
                out["confirmations"] = self._tip().height - block.height + 1
                out["time"] = block.time
                out["blocktime"] = block.time
            else:
                out["confirmations"] = 0
        return out

    def _rpc_gettxout(self, txid: Any, n: Any, include_mempool: Any = True) -> Any:
        t = self._hash(txid, "txid")
        vout = self._int(n)
        self._coins()
        key = (t, vout)
        tx = self.chain.tx(t)
        status = self.chain.tx_status(t)
        if tx is not None:
            if status is None and not include_mempool:
                return None  # created by a mempool tx: not in the chainstate
            if vout >= len(tx.vout) or tx.vout[vout].script[:1] == b"\x6a":
                return None
            out = tx.vout[vout]
            height = status.block_height if status else None
            generated = tx.is_coinbase
        else:
            u = self._undo(t, vout)
            if u is None or self.chain.any_tx(t) is not None:
                return None  # unknown, or the tx left the chain and the mempool
            out, height, generated = u.out, u.height, False
        if key in self._spent_confirmed or (include_mempool and key in self._spent_mempool):
            return None
        tip = self._tip()
        return {
            "bestblock": tip.hash,
            "confirmations": tip.height - height + 1 if height is not None else 0,
            "value": _Btc(out.value),
            "scriptPubKey": script_pubkey_json(out.script, out.address, self.version),
            "coinbase": generated,
        }


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
