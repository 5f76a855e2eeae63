"""The Mermaid diagrams of the docs name what the synthesized templates and
the code hold: the architecture diagram of one stage (docs/architecture.md)
and the interruption and idle sequence diagrams (docs/lambdas.md).

Names are resolved against the session's synthesized app (tests/conftest.py),
so a renamed construct, a removed rule or a new cross-stack reference fails
here until the picture follows.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest

from tests.docs.markdown import PROJECT_ROOT, fenced_blocks

DOCS = PROJECT_ROOT / "docs"
STACK_IDS = ("network", "storage", "ops", "idle", "training", "serving", "eks")
# `<stack>/<logical ID without CDK's 8-hex suffix>` inside a diagram.
RESOURCE_NAME = re.compile(rf"\b({'|'.join(STACK_IDS)})/([A-Za-z][A-Za-z0-9]*)\b")
CODE_PATH = re.compile(r"\b((?:lambda|node_agent|constructs_lib|ml_stacks|delivery)/[\w./-]+\.(?:py|json|sh))\b")

# --- Mermaid, the subset the docs use ------------------------------------
SHARED_SERVING = "serving"
FLOW_NODE = re.compile(r'^(\w+)\["([^"]+)"\]$')
FLOW_EDGE = re.compile(r'^(\w+) -->\|"([^"]+)"\| (\w+)$')
SEQ_PARTICIPANT = re.compile(r"^participant (\w+) as (.+)$")
SEQ_MESSAGE = re.compile(r"^(\w+)-{1,2}>>(\w+): (.+)$")
SEQ_OTHER = re.compile(r"^(sequenceDiagram|autonumber|end|(alt|else|opt|loop) .+|Note over \w+(,\w+)?: .+)$")


def diagram(page: str, index: int) -> list[str]:
    blocks = fenced_blocks((DOCS / page).read_text(), "mermaid")
    return [line.strip() for line in blocks[index].splitlines() if line.strip()]


def logical_id(template: dict, name: str) -> str | None:
    """The logical ID CDK made of construct path ``name`` (name + 8 hex)."""
    matches = [lid for lid in template["Resources"] if re.fullmatch(rf"{name}[0-9A-F]{{8}}", lid)]
    return matches[0] if len(matches) == 1 else None


def cross_stack_references(synthesized) -> dict[tuple[str, str], set[str]]:
    """(producer stack id, consumer stack id) -> logical IDs the consumer reads, over every stage."""
    by_name = {s.stack_name: s for s in synthesized.stacks.values()}
    found: dict[tuple[str, str], set[str]] = defaultdict(set)

    def walk(node, consumer):
        if isinstance(node, dict):
            ref = node.get("Fn::GetStackOutput")
            if isinstance(ref, dict):
                producer = by_name[ref["StackName"]]
                value = producer.template_json["Outputs"][ref["OutputName"]]["Value"]
                lid = value["Ref"] if "Ref" in value else value["Fn::GetAtt"][0]
                found[(producer.name, consumer.name)].add(lid)
            for child in node.values():
                walk(child, consumer)
        elif isinstance(node, list):
            for child in node:
                walk(child, consumer)

    for stack in synthesized.stacks.values():
        walk(stack.template_json, stack)
    return found


# --- architecture ---------------------------------------------------------

def architecture() -> tuple[dict[str, str], list[tuple[str, list[str], str]]]:
    nodes, edges = {}, []
    for line in diagram("architecture.md", 0)[1:]:
        if node := FLOW_NODE.match(line):
            nodes[node.group(1)] = node.group(2).split("<br/>")[0]
        elif edge := FLOW_EDGE.match(line):
            edges.append((edge.group(1), [n.strip() for n in edge.group(2).split(",")], edge.group(3)))
        else:
            pytest.fail(f"architecture diagram: a line this test cannot read: {line!r}")
    return nodes, edges


# Every model's stack (serving-<model>) is drawn once, as this node.
MODEL_NODE = "serving_model"


def node_of(stack_id: str) -> str:
    """The architecture node that stands for stack ``stack_id``."""
    return MODEL_NODE if stack_id.startswith(f"{SHARED_SERVING}-") else stack_id


def test_the_architecture_diagram_has_every_stack_of_a_stage_by_its_name(synthesized) -> None:
    nodes, _ = architecture()
    assert diagram("architecture.md", 0)[0] == "flowchart LR"
    assert set(nodes) == {node_of(name) for _, name in synthesized.stacks}
    stage = nodes["network"].removeprefix("ml-").removesuffix("-network")
    assert stage in synthesized.configs
    for node, label in nodes.items():
        if node == MODEL_NODE:
            assert label == f"ml-{stage}-{SHARED_SERVING}-{{model}}", label
            continue
        stack = synthesized.stacks.get((stage, node))
        assert stack is not None and label == stack.stack_name, (node, label)


def test_every_arrow_names_resources_of_the_stack_it_leaves(synthesized) -> None:
    nodes, edges = architecture()
    assert edges
    missing = []
    for producer, names, consumer in edges:
        assert producer in nodes and consumer in nodes and producer != consumer
        for name in names:
            if not any(logical_id(s.template_json, name)
                       for (_, sid), s in synthesized.stacks.items() if node_of(sid) == producer):
                missing.append(f"{producer}/{name}")
    assert missing == []


def test_every_cross_stack_reference_of_every_stage_is_an_arrow(synthesized) -> None:
    _, edges = architecture()
    drawn = defaultdict(list)
    for producer, names, consumer in edges:
        drawn[(producer, consumer)] += names
    references = cross_stack_references(synthesized)
    assert references, "no cross-stack reference found: the walk is broken"
    undrawn = sorted(f"{producer} -> {consumer}: {lid}" for (producer, consumer), lids in references.items()
                     for lid in lids
                     # a resource under a drawn construct (Vpc's subnets under Vpc)
                     if not any(lid.startswith(name)
                                for name in drawn[(node_of(producer), node_of(consumer))]))
    assert undrawn == []


# --- sequence diagrams ------------------------------------------------------

SEQUENCES = {"interruption": ("lambdas.md", 0), "idle": ("lambdas.md", 1)}


def sequence(name: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    participants, messages = {}, []
    lines = diagram(*SEQUENCES[name])
    assert lines[0] == "sequenceDiagram"
    for line in lines:
        if p := SEQ_PARTICIPANT.match(line):
            participants[p.group(1)] = p.group(2)
        elif m := SEQ_MESSAGE.match(line):
            assert {m.group(1), m.group(2)} <= set(participants), line
            assert ";" not in m.group(3) and "#" not in m.group(3), f"Mermaid reads ; and # in: {line}"
            messages.append(m.groups())
        else:
            assert SEQ_OTHER.match(line), f"{name} diagram: a line this test cannot read: {line!r}"
    return participants, messages


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_every_resource_a_sequence_names_is_in_the_templates(name, synthesized) -> None:
    text = "\n".join(diagram(*SEQUENCES[name]))
    named = RESOURCE_NAME.findall(text)
    assert len(named) >= 5, "the diagram should name the resources it shows"
    stage = next(iter(synthesized.configs))
    missing = [f"{stack}/{res}" for stack, res in named
               if (stage, stack) not in synthesized.stacks
               or not logical_id(synthesized.stack(stage, stack).template_json, res)]
    assert missing == []


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_every_code_path_a_sequence_names_exists(name) -> None:
    paths = CODE_PATH.findall("\n".join(diagram(*SEQUENCES[name])))
    assert paths and [p for p in paths if not (PROJECT_ROOT / p).is_file()] == []


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_every_message_to_a_rule_is_an_event_the_rule_matches(name, synthesized) -> None:
    participants, messages = sequence(name)
    stage = next(iter(synthesized.configs))
    rules = {}
    for pid, alias in participants.items():
        found = RESOURCE_NAME.fullmatch(alias.strip())
        if found:
            template = synthesized.stack(stage, found.group(1)).template_json
            resource = template["Resources"][logical_id(template, found.group(2))]
            if resource["Type"] == "AWS::Events::Rule" and "EventPattern" in resource["Properties"]:
                rules[pid] = resource["Properties"]["EventPattern"]
    sent = [(rules[target], text) for _, target, text in messages if target in rules]
    assert sent, "the diagram shows no event reaching a rule"
    for pattern, text in sent:
        assert any(detail_type in text for detail_type in pattern["detail-type"]), (text, pattern)


def test_the_idle_diagram_queries_the_metric_the_function_reads() -> None:
    config = json.loads((PROJECT_ROOT / "lambda" / "idle_shutdown" / "gpu_metrics.json").read_text())
    _, messages = sequence("idle")
    published = [text for source, _, text in messages if source == "Node"]
    assert published and config["idle_metric"] in published[0]
    assert config["instance_dimension"] in published[0]


def test_the_parsers_read_a_broken_diagram_as_broken(synthesized) -> None:
    assert logical_id({"Resources": {"QueueAA93DBEF": {}}}, "Queue") == "QueueAA93DBEF"
    assert logical_id({"Resources": {"QueueDeadAA93DBEF": {}}}, "Queue") is None
    assert not SEQ_OTHER.match("Fn->>Queue; oops")
    assert RESOURCE_NAME.findall("participant Q as training/NoSuchQueue") == [("training", "NoSuchQueue")]
