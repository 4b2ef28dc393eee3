"""Local Esplora REST server over a SimChain (aiohttp), with fault injection for tests.

Routes live under `/api`, as on mempool.space and blockstream.info, and answer with the shapes,
status codes and plain-text error bodies of Blockstream's electrs (`src/rest.rs`): tx objects
(txid, version, locktime, vin, vout, size, weight, fee, status), address stats, paged histories
(`/address/:a/txs` = up to 50 mempool + 25 confirmed; `/txs/chain[/:last_seen_txid]` 25 per page),
blocks (`/block/:hash`, `/status`, `/txids`, `/txs[/:start_index]`, `/raw`, `/header`), `/blocks[/:h]`,
tip height/hash as plain text, `/tx/:txid[/status|/hex|/raw|/outspends|/outspend/:n]`, `/mempool/txids`.

Deliberate choices where electrs has several behaviours or the sim differs:
- `/tx/:txid/status` of an unknown (dropped, replaced) txid is `{"confirmed": false}` with 200, as
  electrs answers; `/tx/:txid` is 404 "Transaction not found" for it.
- Stale (orphaned) blocks stay readable through `/block/:hash`, `/txids`, `/txs`, `/raw`; their status
  is `{"in_best_chain": false, "height": null, "next_best": null}` and their txs are listed with
  `{"confirmed": false}` (electrs has no block id for stale blocks).
- `/blocks[/:h]` stops at the sim's first block (the chain is genesis-less).
- `/block/:hash/txs/:start`: start beyond the block → 404 "start index out of range"; not a multiple of
  25 → 400 "start index must be a multipication of 25" (sic, electrs' long-deployed wording).
- A malformed address → 400 "Invalid Bitcoin address"; one of another network → 400 "Address on
  invalid network". A malformed hash → 400 "Invalid hash string". No blocks yet → 503.

Dialects: `dialect="electrs"` (default) answers as above. `dialect="mempool-core"` answers tx objects
as a mempool.space backend on Bitcoin Core (its `none`/`electrum` modes) converts them
(mempool/mempool backend/src/api/bitcoin/bitcoin-api.ts `$convertTransaction`): an output without an
address has `"scriptpubkey_address": ""` (on outputs and prevouts), a coinbase input is
`{"txid": "", "vout": 0, "prevout": null, "is_coinbase": true, ...}`, and inputs carry empty
`inner_redeemscript_asm`/`inner_witnessscript_asm`. `dialect="mempool-electrum"` is the same server on
its electrum backend (electrum-api.ts): tx objects as `mempool-core`; `/address/:a` answers
`funded_txo_sum` = the balance, `spent_txo_sum` 0, txo counts 0 and an extra `"electrum": true`;
`/address/:a/txs[?after_txid=T]` pages the whole history (mempool first, then newest confirmed) 10 at a
time, with the backend's `if (pos)` quirk (an unknown `after_txid` restarts at the top); `/txs/chain` and
`/txs/mempool` do not exist (404). Both mempool dialects serve `/block/:hash/txs` pages with lazy
prevouts as mempool.space does: a tx with more than 13 inputs has `prevout: null, "lazy": true` from
its 14th input on and `fee: -1`. `EsploraServer.broken` holds txids whose tx object
is served malformed (`vout[0].value` as a float) wherever it appears, to test per-tx skipping.

`Faults` injects failures by regex on the path after `/api`; `EsploraServer` runs the app on
127.0.0.1 and records every request path (after `/api`) in `.requests`.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from monitor.sim.chain import SimBlock, SimChain, SimTx, SimTxOut, TxStatus, script_ops
from watchers.addresses import NETWORKS, InvalidAddress, script_type, validate_address

__all__ = [
    "API_PREFIX",
    "BLOCKSTREAM_429_BODY",
    "BLOCK_LIMIT",
    "CHAIN_KEY",
    "CHAIN_TXS_PER_PAGE",
    "FAULTS_KEY",
    "BROKEN_KEY",
    "DIALECTS",
    "FAULT_KINDS",
    "MAX_MEMPOOL_TXS",
    "MEMPOOL_429_BODY",
    "REQUESTS_KEY",
    "EsploraServer",
    "FaultRule",
    "Faults",
    "block_json",
    "esplora_script_type",
    "make_app",
    "script_asm",
    "status_json",
    "tx_json",
]

API_PREFIX = "/api"
CHAIN_TXS_PER_PAGE = 25  # electrs src/rest.rs constants
MAX_MEMPOOL_TXS = 50
BLOCK_LIMIT = 10
FAULT_KINDS = ("429", "500", "502", "slow", "garbage", "truncated", "reset")

#: Blockstream's 429 body is a ~330-byte JSON notice (CypherBoxLLC/Cypher-Box#194 quotes its start:
#: `{"message":"Blockstream Explorer API NOTICE: Your request rate exceeds the current limit...`).
#: Only that prefix is documented; the rest of this text is a stand-in of the same length and shape.
BLOCKSTREAM_429_BODY = json.dumps(
    {
        "message": "Blockstream Explorer API NOTICE: Your request rate exceeds the current limit. "
        "Please reduce your request rate or consider the Blockstream Explorer Enterprise API, "
        "which offers higher limits and authenticated access. Requests from this address are "
        "temporarily throttled; retry later. See https://blockstream.info for details and terms."
    },
    separators=(",", ":"),
).encode()

#: mempool.space answers 429 with an HTML page advertising Mempool Enterprise (sbounmy/hongbao_bitcoin#340);
#: this is a stand-in with that shape, not a capture.
MEMPOOL_429_BODY = (
    b'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    b"<title>429 Too Many Requests - mempool.space</title>\n</head>\n<body>\n"
    b"<h1>Too Many Requests</h1>\n<p>You have exceeded the rate limits of the mempool.space public API.</p>\n"
    b'<p>Need higher API limits? Consider <a href="https://mempool.space/enterprise">Mempool Enterprise</a>.</p>\n'
    b"</body>\n</html>\n"
)

_NGINX_PAGE = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_GARBAGE_BODY = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    b"<body><p>Checking your browser before accessing the site.</p></body></html>"
)

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
CHAIN_KEY = web.AppKey("chain", SimChain)
FAULTS_KEY = web.AppKey("faults", object)
REQUESTS_KEY = web.AppKey("requests", list)
BROKEN_KEY = web.AppKey("broken", set)
DIALECTS = ("electrs", "mempool-core", "mempool-electrum")
#: Address history page size of mempool.space's electrum backend (electrum-api.ts $getAddressTransactions).
ELECTRUM_PAGE = 10
_LAZY_AFTER = 12  # input index after which mempool.space's block pages leave prevouts unresolved
_STOPPING_KEY = web.AppKey("stopping", asyncio.Event)
TTL_LONG = 157_784_630
TTL_SHORT = 10


# --- script rendering (rust-bitcoin's asm and electrs' type names) --------------------------------

_OPCODE_NAMES: dict[int, str] = {
    0x4C: "OP_PUSHDATA1", 0x4D: "OP_PUSHDATA2", 0x4E: "OP_PUSHDATA4", 0x4F: "OP_PUSHNUM_NEG1",
    0x50: "OP_RESERVED", 0x61: "OP_NOP", 0x62: "OP_VER", 0x63: "OP_IF", 0x64: "OP_NOTIF",
    0x65: "OP_VERIF", 0x66: "OP_VERNOTIF", 0x67: "OP_ELSE", 0x68: "OP_ENDIF", 0x69: "OP_VERIFY",
    0x6A: "OP_RETURN", 0x6B: "OP_TOALTSTACK", 0x6C: "OP_FROMALTSTACK", 0x6D: "OP_2DROP",
    0x6E: "OP_2DUP", 0x6F: "OP_3DUP", 0x70: "OP_2OVER", 0x71: "OP_2ROT", 0x72: "OP_2SWAP",
    0x73: "OP_IFDUP", 0x74: "OP_DEPTH", 0x75: "OP_DROP", 0x76: "OP_DUP", 0x77: "OP_NIP",
    0x78: "OP_OVER", 0x79: "OP_PICK", 0x7A: "OP_ROLL", 0x7B: "OP_ROT", 0x7C: "OP_SWAP",
    0x7D: "OP_TUCK", 0x7E: "OP_CAT", 0x7F: "OP_SUBSTR", 0x80: "OP_LEFT", 0x81: "OP_RIGHT",
    0x82: "OP_SIZE", 0x83: "OP_INVERT", 0x84: "OP_AND", 0x85: "OP_OR", 0x86: "OP_XOR",
    0x87: "OP_EQUAL", 0x88: "OP_EQUALVERIFY", 0x89: "OP_RESERVED1", 0x8A: "OP_RESERVED2",
    0x8B: "OP_1ADD", 0x8C: "OP_1SUB", 0x8D: "OP_2MUL", 0x8E: "OP_2DIV", 0x8F: "OP_NEGATE",
    0x90: "OP_ABS", 0x91: "OP_NOT", 0x92: "OP_0NOTEQUAL", 0x93: "OP_ADD", 0x94: "OP_SUB",
    0x95: "OP_MUL", 0x96: "OP_DIV", 0x97: "OP_MOD", 0x98: "OP_LSHIFT", 0x99: "OP_RSHIFT",
    0x9A: "OP_BOOLAND", 0x9B: "OP_BOOLOR", 0x9C: "OP_NUMEQUAL", 0x9D: "OP_NUMEQUALVERIFY",
    0x9E: "OP_NUMNOTEQUAL", 0x9F: "OP_LESSTHAN", 0xA0: "OP_GREATERTHAN", 0xA1: "OP_LESSTHANOREQUAL",
    0xA2: "OP_GREATERTHANOREQUAL", 0xA3: "OP_MIN", 0xA4: "OP_MAX", 0xA5: "OP_WITHIN",
    0xA6: "OP_RIPEMD160", 0xA7: "OP_SHA1", 0xA8: "OP_SHA256", 0xA9: "OP_HASH160", 0xAA: "OP_HASH256",
    0xAB: "OP_CODESEPARATOR", 0xAC: "OP_CHECKSIG", 0xAD: "OP_CHECKSIGVERIFY", 0xAE: "OP_CHECKMULTISIG",
    0xAF: "OP_CHECKMULTISIGVERIFY", 0xB0: "OP_NOP1", 0xB1: "OP_CLTV", 0xB2: "OP_CSV", 0xB3: "OP_NOP4",
    0xB4: "OP_NOP5", 0xB5: "OP_NOP6", 0xB6: "OP_NOP7", 0xB7: "OP_NOP8", 0xB8: "OP_NOP9",
    0xB9: "OP_NOP10", 0xBA: "OP_CHECKSIGADD", 0xFF: "OP_INVALIDOPCODE",
}  # fmt: skip
for _op in range(1, 76):
    _OPCODE_NAMES[_op] = f"OP_PUSHBYTES_{_op}"
for _op in range(0x51, 0x61):
    _OPCODE_NAMES[_op] = f"OP_PUSHNUM_{_op - 0x50}"
for _op in range(0xBB, 0xFF):
    _OPCODE_NAMES[_op] = f"OP_RETURN_{_op}"
_OPCODE_NAMES[0x00] = "OP_0"


def script_asm(script: bytes) -> str:
    """Script in rust-bitcoin's asm form, as Esplora shows it (`OP_0 OP_PUSHBYTES_20 89ab...`)."""
    parts = []
    for op, data in script_ops(script):
        parts.append(_OPCODE_NAMES[op])
        if data is None:
            parts.append("<push past end>")
            break
        if op <= 0x4E and data:
            parts.append(data.hex())
    return " ".join(parts)


def _is_bare_multisig(script: bytes) -> bool:
    if len(script) < 3 or script[-1] != 0xAE or not 0x51 <= script[-2] <= 0x60:
        return False
    ins = list(script_ops(script))
    if len(ins) < 4 or not 0x51 <= ins[0][0] <= 0x60:
        return False
    keys = ins[1:-2]
    return all(op in (33, 65) and data is not None for op, data in keys) and len(keys) == ins[-2][0] - 0x50


def esplora_script_type(script: bytes) -> str:
    """Esplora's `scriptpubkey_type`: p2pkh, p2sh, v0_p2wpkh, v0_p2wsh, v1_p2tr, p2pk, op_return, multisig, empty, unknown."""
    if not script:
        return "empty"
    kind = script_type(script)
    if kind != "unknown":
        return kind
    return "multisig" if _is_bare_multisig(script) else "unknown"


# --- JSON shapes ------------------------------------------------------------------------------------


def status_json(status: TxStatus | None) -> dict[str, Any]:
    """A tx status: `{"confirmed": false}` or the four confirmed keys."""
    if status is None:
        return {"confirmed": False}
    return {
        "confirmed": True,
        "block_height": status.block_height,
        "block_hash": status.block_hash,
        "block_time": status.block_time,
    }


def _txout_json(out: SimTxOut) -> dict[str, Any]:
    d: dict[str, Any] = {
        "scriptpubkey": out.script.hex(),
        "scriptpubkey_asm": script_asm(out.script),
        "scriptpubkey_type": esplora_script_type(out.script),
    }
    if out.address is not None:
        d["scriptpubkey_address"] = out.address
    d["value"] = out.value
    return d


def _inner_scripts(script_sig: bytes, witness: tuple[bytes, ...], prev: SimTxOut) -> tuple[bytes | None, bytes | None]:
    # electrs util/script.rs get_innerscripts: the redeem script is the last push of a P2SH spend's
    # scriptSig; the witness script is the last witness item of a P2WSH (or P2SH-P2WSH) spend.
    redeem = None
    if script_type(prev.script) == "p2sh":
        ins = list(script_ops(script_sig))
        if ins and ins[-1][0] <= 0x4E and ins[-1][1] is not None:
            redeem = ins[-1][1]
    wscript = None
    if (script_type(prev.script) == "v0_p2wsh" or (redeem is not None and script_type(redeem) == "v0_p2wsh")) and witness:
        wscript = witness[-1]
    return redeem, wscript


def _tx_core(chain: SimChain, tx: SimTx) -> dict[str, Any]:
    vin = []
    for i in tx.vin:
        prev = None if i.is_coinbase else chain.prevout(i.txid, i.vout)
        d: dict[str, Any] = {
            "txid": i.txid,
            "vout": i.vout,
            "prevout": _txout_json(prev) if prev is not None else None,
            "scriptsig": i.script_sig.hex(),
            "scriptsig_asm": script_asm(i.script_sig),
        }
        if i.witness:
            d["witness"] = [w.hex() for w in i.witness]
        d["is_coinbase"] = i.is_coinbase
        d["sequence"] = i.sequence
        if prev is not None:
            redeem, wscript = _inner_scripts(i.script_sig, i.witness, prev)
            if redeem is not None:
                d["inner_redeemscript_asm"] = script_asm(redeem)
            if wscript is not None:
                d["inner_witnessscript_asm"] = script_asm(wscript)
        vin.append(d)
    return {
        "txid": tx.txid,
        "version": tx.version,
        "locktime": tx.locktime,
        "vin": vin,
        "vout": [_txout_json(o) for o in tx.vout],
        "size": tx.size,
        "weight": tx.weight,
        "fee": tx.fee,
    }


def _mempool_core(core: dict[str, Any]) -> dict[str, Any]:
    # mempool.space's conversion of Core's answers (bitcoin-api.ts $convertTransaction): "" for no address,
    # a coinbase input as txid "" / vout 0 / prevout null, empty inner script fields.
    def out(o: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if o is None else {**o, "scriptpubkey_address": o.get("scriptpubkey_address", "")}

    vin = []
    for i in core["vin"]:
        d = {
            **i,
            "prevout": out(i["prevout"]),
            "inner_redeemscript_asm": i.get("inner_redeemscript_asm", ""),
            "inner_witnessscript_asm": i.get("inner_witnessscript_asm", ""),
        }
        if i["is_coinbase"]:
            d.update(txid="", vout=0, prevout=None)
        vin.append(d)
    return {**core, "vin": vin, "vout": [out(o) for o in core["vout"]]}


def _lazy_prevouts(tx: dict[str, Any]) -> dict[str, Any]:
    # mempool.space's block txs pages resolve at most 13 prevouts per tx (bitcoin-api.ts
    # $calculateFeeFromInputs with lazyPrevouts): later inputs get prevout null and "lazy": true, fee -1.
    if len(tx["vin"]) <= _LAZY_AFTER + 1 or tx["vin"][0]["is_coinbase"]:
        return tx
    vin = [i if n <= _LAZY_AFTER else {**i, "prevout": None, "lazy": True} for n, i in enumerate(tx["vin"])]
    return {**tx, "vin": vin, "fee": -1}


def tx_json(chain: SimChain, tx: SimTx, status: TxStatus | None) -> dict[str, Any]:
    """Esplora's tx object for a SimTx with the given status."""
    return {**_tx_core(chain, tx), "status": status_json(status)}


def block_json(block: SimBlock) -> dict[str, Any]:
    """Esplora's block object (the 13 keys of electrs' BlockValue, in its order)."""
    return {
        "id": block.hash,
        "height": block.height,
        "version": block.version,
        "timestamp": block.time,
        "tx_count": block.tx_count,
        "size": block.size,
        "weight": block.weight,
        "merkle_root": block.merkle_root,
        "previousblockhash": block.prev_hash,
        "mediantime": block.median_time,
        "nonce": block.nonce,
        "bits": block.bits,
        "difficulty": block.difficulty,
    }


# --- faults -------------------------------------------------------------------------------------------


@dataclass
class FaultRule:
    """One injected failure: requests whose path (after /api) matches `pattern` fail `times` times."""

    pattern: re.Pattern[str]
    kind: str
    times: int | None  # None: forever
    retry_after: float | None = None
    delay: float = 0.0
    body: str = "blockstream"  # 429 body style: "blockstream" (JSON notice) or "mempool" (HTML page)
    fired: int = 0

    @property
    def active(self) -> bool:
        return self.times is None or self.fired < self.times


@dataclass
class Faults:
    """Fault rules consulted in order for each request; the first active match fires and is used up."""

    rules: list[FaultRule] = field(default_factory=list)

    def add(
        self,
        pattern: str,
        kind: str,
        times: int | None = 1,
        retry_after: float | None = None,
        delay: float = 0.0,
        body: str = "blockstream",
    ) -> FaultRule:
        """Fail the next `times` requests whose path after /api matches `pattern` (re.search) with `kind`.

        Kinds: "429" (Retry-After header when `retry_after` is given; `body` "blockstream" or
        "mempool"), "500", "502" (nginx error pages), "slow" (sleep `delay` s, then answer normally),
        "garbage" (200 with an HTML body), "truncated" (200, the real body cut in half), "reset" (close
        the connection without answering). `delay` also postpones the other kinds.

        `times` counts requests, not client calls: aiohttp's client retries a GET once when the
        connection drops, so an aiohttp caller needs `times=2` to see one "reset".
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        if body not in ("blockstream", "mempool"):
            raise ValueError("body must be 'blockstream' or 'mempool'")
        rule = FaultRule(re.compile(pattern), kind, times, retry_after, delay, body)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule."""
        self.rules.clear()

    def take(self, path: str) -> FaultRule | None:
        """The first active rule matching `path`, counted as fired."""
        for rule in self.rules:
            if rule.active and rule.pattern.search(path):
                rule.fired += 1
                return rule
        return None


# --- request handling -------------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _text(body: str, status: int = 200, ttl: int = TTL_SHORT) -> web.Response:
    return web.Response(
        body=body.encode(), status=status, content_type="text/plain", headers={"Cache-Control": f"public, max-age={ttl}"}
    )


def _json(value: Any, ttl: int = TTL_SHORT) -> web.Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": f"public, max-age={ttl}"})


def _binary(data: bytes, ttl: int = TTL_LONG) -> web.Response:
    return web.Response(body=data, content_type="application/octet-stream", headers={"Cache-Control": f"public, max-age={ttl}"})


class _Api:
    """Routes one request path to the chain views, electrs-style (segments matched by position)."""

    def __init__(self, chain: SimChain, dialect: str = "electrs", broken: set[str] | None = None):
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
        self.chain = chain
        self.dialect = dialect
        self.broken = broken if broken is not None else set()
        self._core_cache: dict[str, dict[str, Any]] = {}  # txid -> tx JSON without status (immutable)
        self._address_cache: dict[str, str] = {}

    # helpers
    def _tx(self, tx: SimTx, status: TxStatus | None) -> dict[str, Any]:
        core = self._core_cache.get(tx.txid)
        if core is None:
            core = _tx_core(self.chain, tx)
            if self.dialect != "electrs":
                core = _mempool_core(core)
            self._core_cache[tx.txid] = core
        out = {**core, "status": status_json(status)}
        if tx.txid in self.broken:
            out["vout"] = [{**out["vout"][0], "value": out["vout"][0]["value"] + 0.5}, *out["vout"][1:]]
        return out

    def _live_tx(self, tx: SimTx) -> dict[str, Any]:
        return self._tx(tx, self.chain.tx_status(tx.txid))

    def _address(self, text: str) -> str:
        hit = self._address_cache.get(text)
        if hit is not None:
            return hit
        try:
            canonical = validate_address(text, self.chain.network).address
        except InvalidAddress:
            for net in NETWORKS:
                if net == self.chain.network:
                    continue
                try:
                    validate_address(text, net)
                except InvalidAddress:
                    continue
                raise _HttpError(400, "Address on invalid network") from None
            raise _HttpError(400, "Invalid Bitcoin address") from None
        self._address_cache[text] = canonical
        return canonical

    @staticmethod
    def _hash(text: str) -> str:
        if not _HEX64.fullmatch(text):
            raise _HttpError(400, "Invalid hash string")
        return text.lower()

    @staticmethod
    def _int(text: str) -> int:
        if not text.isdigit():
            raise _HttpError(400, "Invalid number")
        return int(text)

    def _block(self, text: str) -> SimBlock:
        block = self.chain.block_by_hash(self._hash(text))
        if block is None:
            raise _HttpError(404, "Block not found")
        return block

    def _tip(self) -> SimBlock:
        tip = self.chain.tip
        if tip is None:
            raise _HttpError(503, "the simulated chain has no blocks yet")
        return tip

    # dispatch
    def handle(self, path: str, query: Any = None) -> web.Response:
        parts = path.split("/")[1:]
        p = parts + [None] * (6 - len(parts)) if len(parts) < 6 else parts
        n = len(parts)
        head = p[0]
        if head == "blocks":
            if n == 3 and p[1] == "tip" and p[2] == "hash":
                return _text(self._tip().hash)
            if n == 3 and p[1] == "tip" and p[2] == "height":
                return _text(str(self._tip().height))
            if n <= 2:
                start = int(p[1]) if n == 2 and p[1] and p[1].isdigit() else None
                return self._blocks(start)
        elif head == "block-height" and n == 2:
            block = self.chain.block_at(self._int(p[1]))
            if block is None:
                raise _HttpError(404, "Block not found")
            return _text(block.hash)
        elif head == "block" and 2 <= n <= 4:
            return self._block_routes(p[1], p[2], p[3], n)
        elif head == "address" and 2 <= n <= 5:
            if self.dialect == "mempool-electrum":
                return self._electrum_address_routes(p[1], p[2], n, (query or {}).get("after_txid"))
            return self._address_routes(p[1], p[2], p[3], p[4], n)
        elif head == "tx" and 2 <= n <= 4:
            return self._tx_routes(p[1], p[2], p[3], n)
        elif head == "mempool" and n == 2 and p[1] == "txids":
            return _json([t.txid for t in self.chain.mempool])
        raise _HttpError(404, f"endpoint does not exist {json.dumps(path)}")

    def _blocks(self, start: int | None) -> web.Response:
        block = self._tip() if start is None else self.chain.block_at(start)
        if block is None:
            raise _HttpError(404, "Block not found")
        values = []
        while block is not None and len(values) < BLOCK_LIMIT:
            values.append(block_json(block))
            block = self.chain.block_by_hash(block.prev_hash)
        return _json(values)

    def _block_routes(self, h: str, sub: str | None, arg: str | None, n: int) -> web.Response:
        if n == 2:
            return _json(block_json(self._block(h)), TTL_LONG)
        if sub == "status" and n == 3:
            block = self.chain.block_by_hash(self._hash(h))
            if block is None or not self.chain.is_best(block):
                return _json({"in_best_chain": False, "height": None, "next_best": None})
            nxt = self.chain.next_best(block)
            return _json({"in_best_chain": True, "height": block.height, "next_best": nxt.hash if nxt else None})
        if sub == "txids" and n == 3:
            return _json(self._block(h).txids, TTL_LONG)
        if sub == "header" and n == 3:
            return _text(self._block(h).header.hex(), ttl=TTL_LONG)
        if sub == "raw" and n == 3:
            return _binary(self._block(h).raw())
        if sub == "txid" and n == 4:
            block = self._block(h)
            index = self._int(arg or "")
            if index >= block.tx_count:
                raise _HttpError(404, "tx index out of range")
            return _text(block.txids[index], ttl=TTL_LONG)
        if sub == "txs" and n in (3, 4):
            block = self._block(h)
            start = int(arg) if arg and arg.isdigit() else 0
            if start >= block.tx_count:
                raise _HttpError(404, "start index out of range")
            if start % CHAIN_TXS_PER_PAGE:
                raise _HttpError(400, f"start index must be a multipication of {CHAIN_TXS_PER_PAGE}")
            best = self.chain.is_best(block)
            status = TxStatus(block.height, block.hash, block.time) if best else None
            page = [self._tx(t, status) for t in block.txs[start : start + CHAIN_TXS_PER_PAGE]]
            if self.dialect != "electrs":
                page = [_lazy_prevouts(t) for t in page]
            return _json(page, TTL_LONG if best else TTL_SHORT)
        raise _HttpError(404, f"endpoint does not exist {json.dumps(f'/block/{h}/{sub}')}")

    def _electrum_address_routes(self, a: str, sub: str | None, n: int, after: str | None) -> web.Response:
        addr = self._address(a)
        chain = self.chain
        if n == 2:
            c, m = chain.address_stats(addr)
            balance = c["funded_txo_sum"] - c["spent_txo_sum"]
            pending = m["funded_txo_sum"] - m["spent_txo_sum"]
            return _json(
                {
                    "address": a,
                    "chain_stats": {
                        "funded_txo_count": 0,
                        "funded_txo_sum": balance,
                        "spent_txo_count": 0,
                        "spent_txo_sum": 0,
                        "tx_count": c["tx_count"],
                    },
                    "mempool_stats": {
                        "funded_txo_count": 0,
                        "funded_txo_sum": max(pending, 0),
                        "spent_txo_count": 0,
                        "spent_txo_sum": max(-pending, 0),
                        "tx_count": m["tx_count"],
                    },
                    "electrum": True,
                }
            )
        if sub == "txs" and n == 3:
            history = chain.address_mempool_txids(addr) + chain.address_chain_txids(addr)
            start = 0
            if after:
                pos = history.index(after) if after in history else -1
                start = pos + 1 if pos else 0  # the backend's `if (pos)`: -1 is truthy, 0 is not
            page = history[start : start + ELECTRUM_PAGE]
            return _json([self._live_tx(chain.tx(t)) for t in page])  # type: ignore[arg-type]
        if sub == "utxo" and n == 3:
            return self._address_routes(a, sub, None, None, n)
        raise _HttpError(404, f"Cannot GET /api/address/{a}/{sub}")

    def _address_routes(self, a: str, sub: str | None, sub2: str | None, last: str | None, n: int) -> web.Response:
        addr = self._address(a)
        chain = self.chain
        if n == 2:
            chain_stats, mempool_stats = chain.address_stats(addr)
            return _json({"address": a, "chain_stats": chain_stats, "mempool_stats": mempool_stats})
        if sub == "txs" and n == 3:
            mem = chain.address_mempool_txids(addr)[:MAX_MEMPOOL_TXS]
            conf = chain.address_chain_txids(addr)[:CHAIN_TXS_PER_PAGE]
            return _json([self._live_tx(chain.tx(t)) for t in mem + conf])  # type: ignore[arg-type]
        if sub == "txs" and sub2 == "chain" and n in (4, 5):
            txids = chain.address_chain_txids(addr)
            if n == 5 and last and _HEX64.fullmatch(last):
                # electrs skips until the last seen txid; an unknown one yields an empty page.
                try:
                    txids = txids[txids.index(last.lower()) + 1 :]
                except ValueError:
                    txids = []
            page = txids[:CHAIN_TXS_PER_PAGE]
            return _json([self._live_tx(chain.tx(t)) for t in page])  # type: ignore[arg-type]
        if sub == "txs" and sub2 == "mempool" and n == 4:
            mem = chain.address_mempool_txids(addr)[:MAX_MEMPOOL_TXS]
            return _json([self._live_tx(chain.tx(t)) for t in mem])  # type: ignore[arg-type]
        if sub == "utxo" and n == 3:
            return _json(
                [{"txid": u.txid, "vout": u.vout, "status": status_json(u.status), "value": u.value} for u in chain.utxos(addr)]
            )
        raise _HttpError(404, f"endpoint does not exist {json.dumps(f'/address/{a}/{sub}')}")

    def _tx_routes(self, t: str, sub: str | None, arg: str | None, n: int) -> web.Response:
        txid = self._hash(t)
        chain = self.chain
        if sub == "status" and n == 3:
            return _json(status_json(chain.tx_status(txid)))
        tx = chain.tx(txid)
        if n == 2:
            if tx is None:
                raise _HttpError(404, "Transaction not found")
            return _json(self._live_tx(tx))
        if sub in ("hex", "raw") and n == 3:
            if tx is None:
                raise _HttpError(404, "Transaction not found")
            return _text(tx.hex) if sub == "hex" else _binary(tx.raw)
        if sub == "outspends" and n == 3:
            if tx is None:
                raise _HttpError(404, "Transaction not found")
            return _json([self._spend(s) for s in chain.outspends(txid)])
        if sub == "outspend" and n == 4:
            vout = self._int(arg or "")
            if tx is None or vout >= len(tx.vout):
                return _json({"spent": False})
            return _json(self._spend(chain.outspends(txid)[vout]))
        raise _HttpError(404, f"endpoint does not exist {json.dumps(f'/tx/{t}/{sub}')}")

    @staticmethod
    def _spend(spend) -> dict[str, Any]:
        if spend is None:
            return {"spent": False}
        return {"spent": True, "txid": spend.txid, "vin": spend.vin, "status": status_json(spend.status)}


async def _fault_response(rule: FaultRule, request: web.Request, normal) -> web.StreamResponse:
    kind = rule.kind
    if kind == "429":
        headers = {}
        if rule.retry_after is not None:
            ra = rule.retry_after
            headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
        if rule.body == "mempool":
            return web.Response(status=429, body=MEMPOOL_429_BODY, content_type="text/html", headers=headers)
        return web.Response(status=429, body=BLOCKSTREAM_429_BODY, content_type="application/json", headers=headers)
    if kind in ("500", "502"):
        code = int(kind)
        reason = "Internal Server Error" if code == 500 else "Bad Gateway"
        return web.Response(status=code, body=_NGINX_PAGE.format(code=code, reason=reason).encode(), content_type="text/html")
    if kind == "garbage":
        return web.Response(status=200, body=_GARBAGE_BODY, content_type="text/html")
    if kind == "reset":
        # Abort the socket: the client sees the connection drop with no status line.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=200)
    resp = normal()
    if kind == "truncated":
        body = resp.body if isinstance(resp.body, bytes) else b""
        return web.Response(status=200, body=body[: len(body) // 2], content_type=resp.content_type)
    return resp  # "slow": the delay already happened


def make_app(chain: SimChain, faults: Faults | None = None, *, dialect: str = "electrs") -> web.Application:
    """aiohttp app serving `chain` under /api; `app[REQUESTS_KEY]` records paths, `app[FAULTS_KEY]` the rules,
    `app[BROKEN_KEY]` the txids served malformed."""
    app = web.Application()
    broken: set[str] = set()
    api = _Api(chain, dialect, broken)
    app[BROKEN_KEY] = broken
    fault_rules = faults if faults is not None else Faults()
    requests: list[str] = []
    stopping = asyncio.Event()
    app[CHAIN_KEY] = chain
    app[FAULTS_KEY] = fault_rules
    app[REQUESTS_KEY] = requests
    app[_STOPPING_KEY] = stopping

    async def handler(request: web.Request) -> web.StreamResponse:
        path = request.path[len(API_PREFIX) :] or "/"
        requests.append(f"{path}?{request.query_string}" if request.query_string else path)

        def normal() -> web.Response:
            try:
                return api.handle(path, request.query)
            except _HttpError as err:
                return _text(err.message, err.status, ttl=0)

        rule = fault_rules.take(path)
        if rule is None:
            return normal()
        if rule.delay > 0:
            try:
                await asyncio.wait_for(stopping.wait(), rule.delay)
            except TimeoutError:
                pass
        return await _fault_response(rule, request, normal)

    app.router.add_route("GET", API_PREFIX + "{tail:(/.*)?}", handler)
    return app


class EsploraServer:
    """Run `make_app(chain)` on a real socket: `async with EsploraServer(chain) as srv: srv.url`."""

    def __init__(
        self, chain: SimChain, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None, *, dialect: str = "electrs"
    ):
        self.chain = chain
        self.host = host
        self.port = port
        self.app = make_app(chain, faults, dialect=dialect)
        self._runner: web.AppRunner | None = None

    @property
    def faults(self) -> Faults:
        return self.app[FAULTS_KEY]  # type: ignore[return-value]

    @property
    def broken(self) -> set[str]:
        """Txids whose tx object is served malformed (add and remove while serving)."""
        return self.app[BROKEN_KEY]

    @property
    def requests(self) -> list[str]:
        """Paths (after /api) of every request received, in order, faulted ones included."""
        return self.app[REQUESTS_KEY]

    @property
    def url(self) -> str:
        """Base URL ending in /api, e.g. http://127.0.0.1:41234/api."""
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    async def start(self) -> Self:
        """Bind and serve; `port=0` picks a free port (see `.port`)."""
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop serving; pending slow faults are cut short."""
        self.app[_STOPPING_KEY].set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()
