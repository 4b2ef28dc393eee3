"""`treasury-monitor entities`: the entity table and the commands that manage and discover addresses.

With no subcommand: the table (kind, addresses, candidates, balance seen, reported holdings, share
seen, flows). Subcommands: `import`, `add`, `remove`, `show`, `candidates`, `accept`, `reject`,
`discover` (one pass of co-spend learning, pool payout following and hop tracing).
"""

from __future__ import annotations

import json

import click

from monitor.cli.common import State, run_async
from monitor.clock import SystemClock, iso
from monitor.model import MonitorError, format_btc

__all__ = ["entities"]


def _now() -> int:
    return int(SystemClock().time())


class _Ctx:
    """Config, an open store and the registry built from them (entities synced to the store)."""

    def __init__(self, state: State):
        from monitor.run.runtime import build_registry, open_store

        self.cfg = state.config()
        self.store = open_store(self.cfg, state.db)
        try:
            self.registry = build_registry(self.cfg, self.store)
            self.store.sync_entities(self.registry.entities.values(), now=_now())
        except Exception:
            self.store.close()
            raise

    def __enter__(self) -> _Ctx:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.store.close()
        if isinstance(exc, MonitorError):  # the address book's refusals: exit 1 with its sentence
            raise click.ClickException(str(exc)) from exc

    def canonical(self, address: str) -> str:
        from monitor.discovery.addressbook import canonical

        return canonical(address, self.cfg.network)

    def entity(self, name: str):
        if name not in self.registry:
            raise click.ClickException(f"no entity named {name!r} (see `treasury-monitor entities`)")
        return self.registry.get(name)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def entities(ctx: click.Context, as_json: bool) -> None:
    """Entities: with no subcommand, a table of kind, addresses, balance seen against reported holdings, and flows."""
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.obj
    from monitor.discovery.reconcile import reconcile_store
    from storage.reads import entity_summaries

    with _Ctx(state) as c:
        rows = entity_summaries(c.store)
        recs = {r.entity: r for r in reconcile_store(c.store, c.registry, [r["name"] for r in rows if r["name"] in c.registry])}
    for r in rows:
        rec = recs.get(r["name"])
        r["reconciliation"] = (
            None
            if rec is None
            else {
                "seen_units": rec.seen_sat,
                "reported_btc": rec.reported.value if rec.reported else None,
                "reported_source": rec.reported.source if rec.reported else None,
                "reported_as_of": rec.reported.as_of if rec.reported else None,
                "share_seen": rec.share,
                "gap_units": rec.gap_sat,
                "text": rec.sentence(),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(
        f"{'entity':<38} {'kind':<10} {'addrs':>5} {'cand':>4} {'balance BTC':>18} {'reported BTC':>13} {'seen':>5}"
        "  flows out/in/internal"
    )
    for r in rows:
        f = r["flows"]
        bal = format_btc(r["balance_units"]) if r["addresses_with_balance"] else "-"
        rec = r["reconciliation"]
        rep = f"{rec['reported_btc']:,.0f}" if rec and rec["reported_btc"] is not None else "-"
        seen = _pct(rec["share_seen"]) if rec and r["addresses_with_balance"] else "-"
        click.echo(
            f"{r['name'][:38]:<38} {r['kind']:<10} {r['addresses']:>5} {r['candidates']:>4} {bal:>18} {rep:>13} "
            f"{seen:>5}  {f.get('out', 0)}/{f.get('in', 0)}/{f.get('internal', 0)}"
        )
    gaps = [recs[r["name"]] for r in rows if r["name"] in recs and r["addresses_with_balance"] and recs[r["name"]].reported]
    for rec in gaps:
        click.echo(f"  {rec.entity}: {rec.sentence()}")


# --- import / add / remove ----------------------------------------------------------------------------


@entities.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--entity",
    "entity_name",
    default=None,
    help="Give every address to this entity (else each row's entity column must name one).",
)
@click.option("--source", default=None, help="Source of rows that name none (default: the file name).")
@click.option("--skip-conflicts", is_flag=True, help="Import the other rows when some conflict with another owner.")
@click.option("--dry-run", is_flag=True, help="Check and report; write nothing.")
@click.pass_obj
def import_(state: State, file: str, entity_name: str | None, source: str | None, skip_conflicts: bool, dry_run: bool) -> None:
    """Import a CSV or JSON label export (address, label, entity, source; Arkham-style JSON too).

    Every address is checksum-checked against the configured network; one bad row fails the whole
    import, naming its row. Duplicates and conflicts (an address another entity owns) are reported.
    """
    from monitor.discovery.addressbook import apply_import, plan_import
    from monitor.discovery.labels import LabelImportError, parse_label_file

    with _Ctx(state) as c:
        try:
            rows = parse_label_file(file)
        except LabelImportError as exc:
            raise click.ClickException(f"{file}: nothing imported:\n  " + "\n  ".join(exc.problems)) from exc
        plan = plan_import(
            rows,
            registry=c.registry,
            store=c.store,
            network=c.cfg.network,
            entity=entity_name,
            source=source,
            file=file,
            skip_conflicts=skip_conflicts,
        )
        for line in plan.duplicates:
            click.echo(f"duplicate: {line}", err=True)
        for line in plan.rejected:
            click.echo(f"rejected earlier: {line}", err=True)
        for line in plan.conflicts:
            click.echo(f"conflict: {line}", err=True)
        if not plan.ok:
            raise click.ClickException(f"{file}: nothing imported:\n  " + "\n  ".join(plan.errors))
        if dry_run:
            click.echo(f"{file}: {len(plan.to_add)} address(es) would be imported (dry run)")
            return
        n = apply_import(c.store, plan, now=_now())
    by = {}
    for ent, _, _ in plan.to_add:
        by[ent] = by.get(ent, 0) + 1
    per = ", ".join(f"{k}: {v}" for k, v in sorted(by.items())) or "none"
    click.echo(
        f"{file}: imported {n} address(es) ({per}); {len(plan.duplicates)} duplicate(s), "
        f"{len(plan.conflicts)} conflict(s) skipped, {len(plan.rejected)} rejected earlier"
    )


@entities.command("add")
@click.argument("address")
@click.option("--entity", "entity_name", required=True, help="The entity the address belongs to.")
@click.option("--source", required=True, help="Where this attribution comes from (a URL, a filing, ...).")
@click.option("--label", default="", help="Optional label (e.g. 'cold wallet').")
@click.pass_obj
def add(state: State, address: str, entity_name: str, source: str, label: str) -> None:
    """Add one address to an entity by hand (learned_by manual), with its source."""
    from monitor.discovery import addressbook

    with _Ctx(state) as c:
        c.entity(entity_name)
        msg = addressbook.add(
            c.store, c.registry, entity=entity_name, address=c.canonical(address), source=source, label=label, now=_now()
        )
    click.echo(msg)


@entities.command("remove")
@click.argument("address")
@click.pass_obj
def remove(state: State, address: str) -> None:
    """Remove an imported or manual address; a discovered one is rejected instead (never re-learned)."""
    from monitor.discovery import addressbook

    with _Ctx(state) as c:
        msg = addressbook.remove(c.store, c.canonical(address))
    click.echo(msg)


# --- candidates ---------------------------------------------------------------------------------------


@entities.command("candidates")
@click.option("--entity", "entity_name", default=None, help="Only this entity's candidates.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def candidates(state: State, entity_name: str | None, as_json: bool) -> None:
    """Addresses proposed by discovery (pool payouts, change heuristics) with their evidence."""
    from storage.discovery import candidate_rows

    with _Ctx(state) as c:
        rows = candidate_rows(c.store, entity=entity_name)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no candidates" + (f" for {entity_name}" if entity_name else ""))
        return
    for r in rows:
        click.echo(f"{r['address']}  {r['entity']}  {r['learned_by']}: {_summary(r)}")
        click.echo(f"    source: {r['source']}")
        for e in r["evidence"][:5]:
            click.echo(f"    {_evidence_line(e)}")
        if len(r["evidence"]) > 5:
            click.echo(f"    ... {len(r['evidence']) - 5} more")
    click.echo("decide with `treasury-monitor entities accept ADDRESS` or `entities reject ADDRESS`")


def _summary(r: dict) -> str:
    if r["payouts"]:
        return f"{r['payouts']} payouts, {format_btc(r['payout_units'])} BTC, blocks {r['first_height']}-{r['last_height']}"
    return f"{r['evidence_count']} evidence row(s)"


def _evidence_line(e: dict) -> str:
    where = f"block {e['block_height']}" if e["block_height"] is not None else ""
    value = f" {format_btc(e['value_units'])} BTC" if e["value_units"] is not None else ""
    d = e["detail"]
    extra = (
        d.get("pool")
        or d.get("reason")
        or (f"{d.get('file')} row {d.get('row')}" if d.get("file") else "")
        or d.get("source", "")
    )
    txid = f" tx {e['txid']}" if e["txid"] else ""
    return f"{e['kind']}: {where}{txid}{value} {extra}".strip()


@entities.command("accept")
@click.argument("address")
@click.pass_obj
def accept(state: State, address: str) -> None:
    """Accept a candidate address: it becomes active and is watched from the next poll."""
    from monitor.discovery import addressbook

    with _Ctx(state) as c:
        msg = addressbook.accept(c.store, c.registry, c.canonical(address))
    click.echo(msg)


@entities.command("reject")
@click.argument("address")
@click.pass_obj
def reject(state: State, address: str) -> None:
    """Reject a candidate or learned address: it stops counting and is never re-added by discovery."""
    from monitor.discovery import addressbook

    with _Ctx(state) as c:
        msg = addressbook.reject(c.store, c.canonical(address))
    click.echo(msg)


# --- show ---------------------------------------------------------------------------------------------


def _fact_line(label: str, fact, unit: str) -> str | None:
    if fact is None:
        return None
    v = f"{fact.value:,.0f}" if fact.value == int(fact.value) else f"{fact.value:,}"
    note = f" — {fact.note}" if fact.note else ""
    return f"  {label}: {v} {unit} (as of {fact.as_of}; source: {fact.source}){note}"


def show_data(store, registry, name: str) -> dict:
    """Everything `entities show` prints, as a dict (also used by --json)."""
    from monitor.discovery.pools import production_check
    from monitor.discovery.reconcile import reconcile_store
    from storage.discovery import candidate_rows, evidence_rows, flag_rows, latest_btc_balances, trace_rows

    e = registry.get(name)
    balances = latest_btc_balances(store)
    addrs = []
    for r in store.address_rows(entity=name):
        bal = balances.get(r["address"])
        ev = evidence_rows(store, chain=r["chain"], address=r["address"])
        addrs.append(
            {
                **{k: r[k] for k in ("chain", "address", "status", "learned_by", "source", "label", "as_of", "evidence")},
                "balance_units": bal[0] if bal else None,
                "evidence_rows": len(ev),
            }
        )
    rec = reconcile_store(store, registry, [name])[0] if registry.is_tracked(e) else None
    prod = production_check(store, registry, name)
    p = e.profile
    facts = {
        k: getattr(p, k).__dict__
        for k in ("holdings_btc", "monthly_production_btc", "cash_cost_usd", "efficiency_j_th")
        if getattr(p, k) is not None
    }
    return {
        "name": e.name,
        "kind": e.kind,
        "note": e.note,
        "watch": e.watch,
        "profile": {**facts, "strategy_tags": list(p.strategy_tags), "strategy_source": p.strategy_source},
        "addresses": addrs,
        "candidates": len(candidate_rows(store, entity=name)),
        "reconciliation": None
        if rec is None
        else {"seen_units": rec.seen_sat, "share_seen": rec.share, "gap_units": rec.gap_sat, "text": rec.sentence()},
        "production": None
        if prod is None
        else {
            "blocks": prod.blocks,
            "block_reward_units": prod.block_reward_sat,
            "payouts": prod.payouts,
            "payout_units": prod.payout_sat,
            "wallets": prod.wallets,
            "since": iso(prod.since),
            "until": iso(prod.until),
            "ratio": prod.ratio,
            "text": prod.sentence(),
            "source": prod.source,
        },
        "traces": [
            {
                "txid": t.txid,
                "n": t.n,
                "status": t.status,
                "hops": t.hops,
                "path": list(t.path),
                "result": t.result,
                "attribution": t.attribution,
            }
            for t in trace_rows(store, entity=name)
        ],
        "flags": [{"txid": f["txid"], "kind": f["kind"], "detail": f["detail"]} for f in flag_rows(store, entity=name)],
    }


@entities.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def show(state: State, name: str, as_json: bool) -> None:
    """One entity: profile facts with sources, addresses with how each was learned, reconciliation, discovery."""
    with _Ctx(state) as c:
        c.entity(name)
        d = show_data(c.store, c.registry, name)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"{d['name']} ({d['kind']}{'' if d['watch'] else ', label only'})")
    if d["note"]:
        click.echo(f"  {d['note']}")
    e = d["profile"]
    from monitor.model import Fact

    lines = [
        _fact_line("holdings", Fact(**e["holdings_btc"]) if "holdings_btc" in e else None, "BTC"),
        _fact_line("monthly production", Fact(**e["monthly_production_btc"]) if "monthly_production_btc" in e else None, "BTC"),
        _fact_line("cash cost", Fact(**e["cash_cost_usd"]) if "cash_cost_usd" in e else None, "USD/BTC"),
        _fact_line("fleet efficiency", Fact(**e["efficiency_j_th"]) if "efficiency_j_th" in e else None, "J/TH"),
    ]
    click.echo("profile:")
    for line in lines:
        if line:
            click.echo(line)
    if e["strategy_tags"]:
        click.echo(f"  strategy: {', '.join(e['strategy_tags'])} (source: {e['strategy_source'] or 'none given'})")
    if d["reconciliation"]:
        click.echo(f"reconciliation: {d['reconciliation']['text']}")
    if d["production"]:
        click.echo(f"production: {d['production']['text']}")
    for status in ("active", "provisional", "candidate", "rejected"):
        rows = [a for a in d["addresses"] if a["status"] == status]
        if not rows:
            continue
        click.echo(f"{status} addresses ({len(rows)}):")
        for a in rows[:200]:
            bal = f"  {format_btc(a['balance_units'])} BTC" if a["balance_units"] is not None else ""
            label = f" [{a['label']}]" if a["label"] else ""
            ev = f"; evidence: {a['evidence']}" if a["evidence"] else ""
            click.echo(f"  {a['address']}{bal}  {a['learned_by']}{label}: {a['source']}{ev}")
        if len(rows) > 200:
            click.echo(f"  ... {len(rows) - 200} more (use --json)")
    if d["traces"]:
        click.echo(f"traces ({len(d['traces'])}):")
        for t in d["traces"]:
            click.echo(f"  {t['txid']}:{t['n']} {t['status']} after {t['hops']} hop(s): {t['result']}")
    if d["flags"]:
        click.echo(f"co-spends not merged ({len(d['flags'])}):")
        for f in d["flags"][:20]:
            click.echo(f"  {f['txid']} {f['kind']}: {f['detail']}")


# --- discover -----------------------------------------------------------------------------------------


@entities.command("discover")
@click.option("--cospend/--no-cospend", default=None, help="Co-spend learning over stored txs [default: [discovery] cospend].")
@click.option(
    "--pools/--no-pools", "pools", default=None, help="Follow pool payouts to miners' wallets [default: [discovery] pools]."
)
@click.option("--trace/--no-trace", default=None, help="Hop-trace unknown destinations [default: [discovery] trace].")
@click.option(
    "--auto-accept",
    type=int,
    default=None,
    help="Accept pool-payout recipients at once from this many payouts [default: [discovery] pool_auto_accept_payouts].",
)
@click.pass_obj
def discover(state: State, cospend: bool | None, pools: bool | None, trace: bool | None, auto_accept: int | None) -> None:
    """One pass of discovery: the daemon's discovery job, with the `[discovery]` config, in every source mode."""
    from monitor.discovery.jobs import NO_DISCOVERY_SOURCE, discover_once, discovery_source
    from monitor.run.runtime import runtime

    cfg = state.config()  # read before the loop starts
    d = cfg.discovery
    cospend = d.cospend if cospend is None else cospend
    pools = d.pools if pools is None else pools
    trace = d.trace if trace is None else trace

    async def go():
        async with runtime(cfg, db=state.db) as rt:
            source = discovery_source(rt.sources, rt.clock)
            if source is None and (pools or trace):
                raise click.ClickException(NO_DISCOVERY_SOURCE)
            return await discover_once(
                store=rt.store,
                registry=rt.registry,
                pipeline=rt.pipeline,
                source=source,
                now=int(rt.clock.time()),
                config=d,
                cospend=cospend,
                pools=pools,
                trace=trace,
                auto_accept_payouts=auto_accept,
            )

    r = run_async(go())
    if r.cospend is not None:
        res = r.cospend.result
        click.echo(
            f"co-spend: {len(r.cospend.added)} address(es) learned, {len(res.flags)} tx(s) flagged "
            f"({', '.join(sorted({f.kind for f in res.flags})) or 'none'}), {len(r.cospend.proposed)} change candidate(s)"
        )
        for item in r.cospend.added:
            click.echo(f"  + {item.address.address} → {item.entity}: {item.reason}")
    if r.pools is not None:
        f = r.pools
        click.echo(
            f"pools ({', '.join(f.pools) or 'none followed'}): {f.txs} txs read, {f.new_blocks} new pool block(s), "
            f"{f.payouts} payout output(s); {len(f.proposed)} candidate(s) proposed, {len(f.accepted)} accepted"
            + (f"; {len(f.failed)} address(es) failed" if f.failed else "")
        )
        for p in f.proposed + f.accepted:
            click.echo(f"  {p.status}: {p.address} → {p.entity} ({p.payouts} payouts, {format_btc(p.total)} BTC)")
    for a in r.settled:
        click.echo(
            f"provisional: {a} confirmed (its swept coins sat unspent for {state.config().discovery.provisional_settle_days:g} days)"
        )
    if r.traced is not None:
        click.echo(f"tracing: {r.traced} flow(s) re-attributed")
