"""Presentation-context plans: the file's own syntax first, fallbacks, never over 128."""

from __future__ import annotations

from dvdexit_cli.dicom.contexts import MAX_CONTEXTS, plan_contexts

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
ELE = "1.2.840.10008.1.2.1"
ILE = "1.2.840.10008.1.2"
J2K = "1.2.840.10008.1.2.4.91"


def test_each_syntax_a_file_uses_gets_its_own_context_then_the_fallbacks() -> None:
    (plan,) = plan_contexts([(CT, J2K), (CT, ELE), (SC, ILE)])

    ct = [c.transfer_syntaxes for c in plan.contexts if c.abstract_syntax == CT]
    sc = [c.transfer_syntaxes for c in plan.contexts if c.abstract_syntax == SC]
    assert ct == [(J2K,), (ELE,), (ILE,)]
    assert sc == [(ILE,), (ELE,)]
    assert plan.serves == {(CT, J2K), (CT, ELE), (SC, ILE)}


def test_many_sop_classes_are_split_over_associations_of_at_most_128_contexts() -> None:
    pairs = [(f"1.2.3.{n}", ELE) for n in range(100)]  # 2 contexts each

    plans = plan_contexts(pairs)

    assert len(plans) == 2
    assert all(len(p.contexts) <= MAX_CONTEXTS for p in plans)
    served = set().union(*(p.serves for p in plans))
    assert served == set(pairs)
    # A SOP class never straddles two associations.
    for plan in plans:
        classes = {c.abstract_syntax for c in plan.contexts}
        assert {sop for sop, _ in plan.serves} == classes


def test_nothing_to_send_plans_no_association() -> None:
    assert plan_contexts([]) == []
