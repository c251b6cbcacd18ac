"""Validate Home Assistant MQTT discovery payloads with Home Assistant's own schemas.

Run by the tests with the Home Assistant venv's Python (``.venv-ha/bin/python``), never with
buildingd's: reads ``[[topic, config], ...]`` as JSON on stdin and prints ``{topic: error or
null}``. Each config goes through ``PLATFORM_SCHEMA_MODERN`` of its platform (unknown keys are
errors there, where discovery would drop them silently) and then ``DISCOVERY_SCHEMA``.
"""

import importlib
import json
import sys


def main() -> None:
    results: dict[str, str | None] = {}
    for topic, config in json.load(sys.stdin):
        platform = topic.split("/")[1]
        module = importlib.import_module(f"homeassistant.components.mqtt.{platform}")
        try:
            module.PLATFORM_SCHEMA_MODERN(dict(config))
            module.DISCOVERY_SCHEMA(dict(config))
        except Exception as err:
            results[topic] = f"{type(err).__name__}: {err}"
        else:
            results[topic] = None
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
