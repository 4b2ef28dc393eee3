"""The sweep and provisional-address rules (pure): what is a sweep, and what a provisional address's spend
decides. "What else looks like this": a payment of whole coins to an exchange deposit address is a sweep at
first; only the address's later behaviour tells them apart. The routes run end to end in test_trace_routes.py."""

from builders import COIN, addr, entity, make_tx

from monitor.core.flows import entity_flows
from monitor.core.registry import Registry
from monitor.discovery.provisional import apply_provisional, find_sweeps, judge_spends
from monitor.model import Attribution

MAIN, COLD, COLD2, KRAKEN, STRANGER, FRESH = (
    addr(x) for x in ("p-main", "p-cold", "p-cold2", "p-kraken", "p-stranger", "p-fresh")
)
BASE = Registry([entity("Miner", "miner", [MAIN]), entity("Kraken", "exchange", [KRAKEN], watch=False)])


def test_sweeps_are_change_less_spends_of_one_entity_to_unattributed_addresses_only():
    [s] = find_sweeps([make_tx([(MAIN, 10 * COIN)], [(COLD, 10 * COIN - 500)])], BASE)
    assert (s.entity, s.address, s.n, s.value) == ("Miner", COLD, 0, 10 * COIN - 500)
    assert len(find_sweeps([make_tx([(MAIN, 10 * COIN)], [(COLD, 5 * COIN), (COLD2, 5 * COIN - 500)])], BASE)) == 2
    not_sweeps = [
        make_tx([(MAIN, 10 * COIN)], [(COLD, 4 * COIN), (MAIN, 6 * COIN - 500)]),  # change back: a payment
        make_tx([(MAIN, 10 * COIN)], [(KRAKEN, 10 * COIN - 500)]),  # to a known exchange: a sale
        make_tx([(MAIN, 5 * COIN), (STRANGER, 5 * COIN)], [(COLD, 10 * COIN - 500)]),  # someone else's input too
        make_tx([(MAIN, 10 * COIN)], [(COLD, 10 * COIN - 500)], height=None),  # unconfirmed
        make_tx([(MAIN, 10 * COIN)], [(addr(f"p-many-{i}"), COIN) for i in range(4)]),  # a batch payout
    ]
    assert [find_sweeps([tx], BASE) for tx in not_sweeps] == [[]] * 5
    assert find_sweeps([make_tx([(MAIN, 10 * COIN)], [(COLD, 10 * COIN - 500)])], BASE, rejected={("bitcoin", COLD)}) == []


def test_a_sweep_keeps_its_outflow_attributed_self_so_it_can_become_a_sale():
    sweep = make_tx([(MAIN, 10 * COIN)], [(COLD, 10 * COIN - 500)])
    reg = apply_provisional(BASE, find_sweeps([sweep], BASE))
    assert reg.is_provisional("bitcoin", COLD) and reg.entity_of("bitcoin", COLD).name == "Miner"
    [f] = entity_flows(sweep, reg)
    assert (f.out, f.change, [d.address for d in f.destinations]) == (10 * COIN - 500, 0, [COLD])
    # coins arriving there from others are the entity's receipts, as for any of its addresses
    [f] = entity_flows(make_tx([(STRANGER, 3 * COIN)], [(COLD, 3 * COIN - 500)]), reg)
    assert (f.direction, f.received) == ("in", 3 * COIN - 500)


def test_what_a_spend_from_a_provisional_address_decides():
    reg = apply_provisional(BASE, find_sweeps([make_tx([(MAIN, 10 * COIN)], [(COLD, 10 * COIN - 500)])], BASE))

    def decide(tx):
        return [(j.outcome, j.attribution) for j in judge_spends([tx], reg)]

    assert decide(make_tx([(COLD, 10 * COIN), (MAIN, COIN)], [(FRESH, 11 * COIN - 500)])) == [("confirmed", None)]
    assert decide(make_tx([(COLD, 10 * COIN)], [(KRAKEN, 4 * COIN), (COLD, 6 * COIN - 500)])) == [("confirmed", None)]
    assert decide(make_tx([(COLD, 10 * COIN)], [(KRAKEN, 4 * COIN), (MAIN, 6 * COIN - 500)])) == [("confirmed", None)]
    # collected with other people's deposits: a deposit, to the exchange it went to (or an unidentified one)
    assert decide(make_tx([(COLD, 10 * COIN), (STRANGER, COIN)], [(KRAKEN, 11 * COIN - 500)])) == [
        ("deposit", Attribution("exchange", "Kraken"))
    ]
    assert decide(make_tx([(COLD, 10 * COIN), (STRANGER, COIN)], [(FRESH, 11 * COIN - 500)])) == [
        ("deposit", Attribution("exchange", "unidentified"))
    ]
    # emptied into an exchange's wallet without change: a deposit swept by its exchange
    assert decide(make_tx([(COLD, 10 * COIN)], [(KRAKEN, 10 * COIN - 500)])) == [("deposit", Attribution("exchange", "Kraken"))]
    # paying an unattributed address (or part to an exchange, the rest to one) decides nothing yet
    assert decide(make_tx([(COLD, 10 * COIN)], [(FRESH, 10 * COIN - 500)])) == []
    assert decide(make_tx([(COLD, 10 * COIN)], [(KRAKEN, 3 * COIN), (FRESH, 7 * COIN - 500)])) == []
    assert decide(make_tx([(COLD, 10 * COIN)], [(KRAKEN, 10 * COIN - 500)], height=None)) == []  # mempool: wait

    [j] = judge_spends([make_tx([(COLD, 10 * COIN)], [(KRAKEN, 10 * COIN - 500)])], reg)
    after = apply_provisional(reg, (), [j])
    assert after.entity_of("bitcoin", COLD) is None
    [j] = judge_spends([make_tx([(COLD, 10 * COIN), (MAIN, COIN)], [(FRESH, 11 * COIN - 500)])], reg)
    after = apply_provisional(reg, (), [j])
    assert not after.is_provisional("bitcoin", COLD) and after.address_record("bitcoin", COLD).learned_by == "sweep"
