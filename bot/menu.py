"""The Official Account's custom menu (the buttons under the chat).

Every button is a CLICK whose key the engine maps to the same command a typed word would
run, so the menu and the text commands can never disagree. ``menu_definition()`` is the
body of WeChat's ``menu/create`` call; pushing it is ``redgrid menu push``'s job.
"""

from __future__ import annotations

from typing import Any

# WeChat's limits: at most 3 top buttons of 4 Chinese characters (16 bytes), at most 5
# sub-buttons each of 8 Chinese characters (60 bytes); we keep names short for small screens.
MAX_TOP = 3
MAX_SUB = 5
MAX_TOP_BYTES = 16
MAX_SUB_BYTES = 60
MAX_KEY_BYTES = 128

CLICK_KEYS = frozenset({
    "RG_SHIFTS", "RG_MINE", "RG_CHECKIN", "RG_CHECKOUT", "RG_REPORT",
    "RG_AED", "RG_REGISTER", "RG_HELP", "RG_SOS",
})

_MENU: list[tuple[str, list[tuple[str, str]]]] = [
    ("志愿服务", [
        ("附近班次", "RG_SHIFTS"),
        ("我的服务", "RG_MINE"),
        ("签到", "RG_CHECKIN"),
        ("签退", "RG_CHECKOUT"),
        ("注册志愿者", "RG_REGISTER"),
    ]),
    ("网格上报", [
        ("上报需求", "RG_REPORT"),
        ("紧急求助", "RG_SOS"),
    ]),
    ("急救AED", [
        ("附近AED", "RG_AED"),
        ("使用帮助", "RG_HELP"),
    ]),
]


def menu_definition() -> dict[str, Any]:
    """The JSON body for ``/cgi-bin/menu/create``."""
    return {
        "button": [
            {"name": top, "sub_button": [{"type": "click", "name": name, "key": key} for name, key in subs]}
            for top, subs in _MENU
        ]
    }


def menu_problems(menu: dict[str, Any]) -> list[str]:
    """What in ``menu`` WeChat would refuse (empty: acceptable)."""
    problems: list[str] = []
    tops = menu.get("button", [])
    if not 1 <= len(tops) <= MAX_TOP:
        problems.append(f"{len(tops)} top buttons (1-{MAX_TOP} allowed)")
    for top in tops:
        name = top.get("name", "")
        if not name or len(name.encode("utf-8")) > MAX_TOP_BYTES:
            problems.append(f"top button name {name!r} empty or over {MAX_TOP_BYTES} bytes")
        subs = top.get("sub_button", [])
        if len(subs) > MAX_SUB:
            problems.append(f"{name!r} has {len(subs)} sub-buttons (at most {MAX_SUB})")
        for sub in subs:
            sname = sub.get("name", "")
            if not sname or len(sname.encode("utf-8")) > MAX_SUB_BYTES:
                problems.append(f"button name {sname!r} empty or over {MAX_SUB_BYTES} bytes")
            if sub.get("type") == "click" and not 0 < len(sub.get("key", "").encode()) <= MAX_KEY_BYTES:
                problems.append(f"button {sname!r} has a bad key")
    return problems


def menu_keys(menu: dict[str, Any]) -> list[str]:
    return [sub["key"] for top in menu.get("button", []) for sub in top.get("sub_button", [])
            if sub.get("type") == "click"]
