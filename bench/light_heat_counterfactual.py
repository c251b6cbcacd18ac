"""Counterfactual for the heating week's heat-pump energy (JSON on stdout): the fast closed loop
(``learning_loop.run``) for both controllers with the lights' heat left out of the rooms' heat
balance (the lights still draw power). It shows how much of the baseline's lower heat-pump
energy is its lights heating its rooms. The simulator is not changed: its module is re-executed
here with the one term removed, and this fails loudly if that term is no longer there.

    python bench/light_heat_counterfactual.py [scenario] [days]
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import buildingd.sim.building as building_module

sys.path.insert(0, str(Path(__file__).parent))
import learning_loop

LIGHT_HEAT = (
    "                + spec.lighting_power_w * zone.light_level_pct / 100\n"
    "                + k.solar_aperture_m2"
)


def main(argv: list[str]) -> int:
    scenario = argv[0] if argv else "heating"
    days = float(argv[1]) if len(argv) > 1 else 14.0
    source = Path(building_module.__file__).read_text(encoding="utf-8")
    if source.count(LIGHT_HEAT) != 1:
        print("sim/building.py: the lights' heat term is not where expected", file=sys.stderr)
        return 1
    patched = source.replace(LIGHT_HEAT, "                + k.solar_aperture_m2")
    module = types.ModuleType("light_heat_counterfactual_building")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(patched, building_module.__file__, "exec"), module.__dict__)
    learning_loop.Building = module.Building  # type: ignore[attr-defined]
    result = {
        "scenario": scenario,
        "days": days,
        "lights_heat_rooms": False,
        "buildingd": learning_loop.run(scenario, False, days),
        "baseline": learning_loop.run(scenario, True, days),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
