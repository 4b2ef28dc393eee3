"""Entity flows and attribution, to the satoshi."""

from builders import addr, entity, make_tx

from monitor.core.attribution import attribute
from monitor.core.flows import entity_flows
from monitor.core.registry import Registry
from monitor.model import Attribution

MARA_HOT, MARA_COLD, MARA_CHANGE = addr("mara-hot"), addr("mara-cold", "p2sh"), addr("mara-change", "p2tr")
RIOT = addr("riot-1")
BINANCE = addr("binance-1", "p2pkh")
STRANGER = addr("stranger")


def registry() -> Registry:
    return Registry(
        [
            entity("MARA", addresses=[MARA_HOT, MARA_COLD, MARA_CHANGE]),
            entity("Riot", addresses=[RIOT]),
            entity("Binance", kind="exchange", addresses=[BINANCE]),
        ]
    )


def test_spend_with_change_back_to_own_address():
    tx = make_tx([(MARA_HOT, 10_0000_0000), (MARA_COLD, 5_0000_0000)], [(BINANCE, 12_0000_0000), (MARA_CHANGE, 2_9999_0000)])
    [flow] = [attribute(f, registry()) for f in entity_flows(tx, registry())]
    assert tx.fee == 10_000
    assert (flow.entity, flow.spent, flow.change, flow.fee_share, flow.out, flow.received) == (
        "MARA",
        15_0000_0000,
        2_9999_0000,
        10_000,
        12_0000_0000,
        0,
    )
    assert flow.direction == "out"
    assert [(d.address, d.value, str(d.attribution)) for d in flow.destinations] == [(BINANCE, 12_0000_0000, "exchange:Binance")]
    assert flow.net == -(12_0000_0000 + 10_000)


def test_consolidation_is_not_an_outflow():
    tx = make_tx([(MARA_HOT, 1_0000_0000), (MARA_HOT, 2_0000_0000), (MARA_CHANGE, 3_0000_0000)], [(MARA_COLD, 5_9999_5000)])
    [flow] = entity_flows(tx, registry())
    assert (flow.spent, flow.change, flow.fee_share, flow.out, flow.received) == (6_0000_0000, 5_9999_5000, 5000, 0, 0)
    assert flow.direction == "internal"
    assert flow.destinations == ()


def test_tx_touching_two_entities_gives_a_flow_for_each():
    tx = make_tx([(MARA_HOT, 3_0000_0000)], [(RIOT, 1_0000_0000), (STRANGER, 1_5000_0000), (MARA_CHANGE, 4999_8000)])
    reg = registry()
    flows = {f.entity: attribute(f, reg) for f in entity_flows(tx, reg)}
    mara, riot = flows["MARA"], flows["Riot"]
    assert (mara.spent, mara.change, mara.fee_share, mara.out) == (3_0000_0000, 4999_8000, 2000, 2_5000_0000)
    assert {(d.address, d.value, str(d.attribution)) for d in mara.destinations} == {
        (RIOT, 1_0000_0000, "entity:Riot"),
        (STRANGER, 1_5000_0000, "unknown"),
    }
    assert (riot.spent, riot.received, riot.out, riot.direction) == (0, 1_0000_0000, 0, "in")


def test_co_spend_of_two_entities_shares_the_fee_pro_rata():
    tx = make_tx([(MARA_HOT, 3_0000_0000), (RIOT, 1_0000_0000)], [(BINANCE, 3_9999_0000)])
    flows = {f.entity: f for f in entity_flows(tx, registry())}
    assert flows["MARA"].fee_share == 7500 and flows["Riot"].fee_share == 2500
    assert flows["MARA"].out == 3_0000_0000 - 7500
    assert flows["Riot"].out == 1_0000_0000 - 2500


def test_counterparties_get_no_flows_and_unrelated_txs_none():
    tx = make_tx([(BINANCE, 5_0000_0000)], [(STRANGER, 4_9999_0000)])
    assert entity_flows(tx, registry()) == []


def test_payout_received_and_op_return_outputs():
    coinbase_like = make_tx([], [(MARA_HOT, 3_1250_0000), (None, 0)], fee=0)
    [flow] = entity_flows(coinbase_like, registry())
    assert (flow.received, flow.out, flow.direction) == (3_1250_0000, 0, "in")


def test_attribution_self_and_traced_paths_are_kept():
    reg = registry()
    tx = make_tx([(MARA_HOT, 2_0000_0000)], [(STRANGER, 1_9999_0000)])
    [flow] = entity_flows(tx, reg)
    traced = flow.destinations[0].__class__(STRANGER, 1_9999_0000, 0, Attribution("exchange", "Kraken", ("ab" * 32,)))
    flow2 = attribute(flow.__class__(**{**flow.__dict__, "destinations": (traced,)}), reg)
    assert str(flow2.destinations[0].attribution) == "exchange:Kraken"
    assert flow2.destinations[0].attribution.path == ("ab" * 32,)
