"""MuJoCo models of the custom MT30 tasks, derived at run time from dm_control's own XML files.

Nothing here ships a copy of a DMControl model: each function reads the suite's file with
``dm_control.suite.common.read_model`` and edits the parsed tree.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from dm_control.suite import common


def _parse(filename: str) -> ET.Element:
    """The root element of a dm_control suite model file."""
    return ET.fromstring(common.read_model(filename))


def _find(root: ET.Element, tag: str, name: str) -> ET.Element:
    """The unique element ``<tag name=name>`` anywhere under ``root``."""
    found = root.findall(f".//{tag}[@name='{name}']")
    if len(found) != 1:
        raise ValueError(f"expected one <{tag} name={name!r}> in the model, found {len(found)}")
    return found[0]


def _with_geom_size(filename: str, geom: str, size: str) -> tuple[str, dict]:
    """A suite model with one geom's ``size`` attribute replaced, plus the suite assets."""
    root = _parse(filename)
    _find(root, "geom", geom).set("size", size)
    return ET.tostring(root, encoding="unicode"), common.ASSETS


def walker_long_floor() -> tuple[str, dict]:
    """walker.xml with the floor plane twice as long (size 500 instead of 250)."""
    return _with_geom_size("walker.xml", "floor", "500 .8 .2")


def cheetah_long_ground() -> tuple[str, dict]:
    """cheetah.xml with the ground plane twice as long (size 200 instead of 100)."""
    return _with_geom_size("cheetah.xml", "ground", "200 .8 .5")


def _link(name: str, pos: str, length: float, joint: ET.Element) -> ET.Element:
    """An arm body with a capsule of ``length`` along x and the given hinge."""
    body = ET.Element("body", name=name, pos=pos)
    ET.SubElement(body, "geom", name=name, type="capsule", fromto=f"0 0 0 {length} 0 0",
                  size=".01", material="self")
    body.append(joint)
    return body


def reacher_three_links() -> tuple[str, dict]:
    """reacher.xml with a three-link arm: arm0 -> arm1 -> hand -> finger, three motors.

    Link lengths 0.09 / 0.09 / 0.1 (capsules), child bodies at +0.09; ``shoulder0`` is a free
    hinge, ``shoulder1`` and ``wrist`` are limited to +-80 degrees. The arena, target, finger
    sphere and the motor defaults (gear 0.05, ctrlrange +-1) are the reacher's own.
    """
    root = _parse("reacher.xml")
    root.set("model", "three-link planar reacher")
    worldbody = root.find("worldbody")
    old_arm = _find(root, "body", "arm")
    old_hand = _find(old_arm, "body", "hand")
    finger = _find(old_hand, "body", "finger")
    finger.set("pos", ".09 0 0")

    limited = {"limited": "true", "range": "-80 80"}
    arm0 = _link("arm0", old_arm.get("pos"), 0.09, ET.Element("joint", name="shoulder0"))
    arm1 = _link("arm1", ".09 0 0", 0.09, ET.Element("joint", name="shoulder1", **limited))
    hand = _link("hand", ".09 0 0", 0.1, ET.Element("joint", name="wrist", **limited))
    hand.append(finger)
    arm1.append(hand)
    arm0.append(arm1)
    worldbody.insert(list(worldbody).index(old_arm), arm0)
    worldbody.remove(old_arm)

    actuator = root.find("actuator")
    for motor in list(actuator):
        actuator.remove(motor)
    for joint in ("shoulder0", "shoulder1", "wrist"):
        ET.SubElement(actuator, "motor", name=joint, joint=joint)
    return ET.tostring(root, encoding="unicode"), common.ASSETS
