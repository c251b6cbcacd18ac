"""The content of an envelope from another process, checked against the models of its ontology
before any agent sees it (an agent would fail parsing what fits none: a zone agent would crash).
Pure; the bus between gateways (``nats.bus``) calls it on everything it takes."""

from __future__ import annotations

from pydantic import ValidationError

from buildingd.agents.bus import Envelope
from buildingd.agents.messages import Content


def content_models() -> dict[str, list[type[Content]]]:
    """Content models by ontology, from every ``Content`` subclass imported so far (several
    models may share one ontology: the demand-response call, proposal and award)."""
    out: dict[str, list[type[Content]]] = {}
    todo: list[type[Content]] = list(Content.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        ontology = getattr(cls, "ontology", None)
        if isinstance(ontology, str):
            out.setdefault(ontology, []).append(cls)
    return out


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(x) for x in first["loc"])
    return f"{where}: {first['msg']}"


_MODELS: dict[str, list[type[Content]]] = {}  # content_models(), read again on a miss


def content_problem(env: Envelope) -> str | None:
    """Why the content does not fit its ontology's model, or None (also for an unknown ontology:
    the receiving agent refuses what it does not understand)."""
    return checked_content(env)[1]


def checked_content(env: Envelope) -> tuple[Content | None, str | None]:
    """The content validated into the first model of its ontology it fits, or why it fits none
    (``None, None`` for an unknown ontology)."""
    content, problem = _fit(env, _MODELS.get(env.ontology, []))
    if content is None:  # perhaps a model imported since the table was made: look again
        _MODELS.clear()
        _MODELS.update(content_models())
        content, problem = _fit(env, _MODELS.get(env.ontology, []))
    return content, problem


def _fit(env: Envelope, models: list[type[Content]]) -> tuple[Content | None, str | None]:
    problem = None
    for model in models:
        try:
            return model.model_validate(env.content), None
        except ValidationError as err:
            problem = problem or _first_error(err)
    return None, problem
