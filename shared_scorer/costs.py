"""Prices: token usage priced in USD as exact ``Decimal``, and the one parser of prices files.

Prices of known models come from the maintained ``genai-prices`` package; a user may override any
model's price. A model with no known price is an error at construction, never a silent $0. The cost
tracker that adds the prices up is in :mod:`shared_scorer.tracking`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared_scorer.errors import ConfigurationError, DataError, UnknownPriceError

MILLION = Decimal(1_000_000)


@runtime_checkable
class Price(Protocol):
    """Anything that turns a call's token usage into USD."""

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """USD for one call."""
        ...


@dataclass(frozen=True)
class TokenPrice:
    """A flat price in USD per million input and output tokens.

    >>> TokenPrice("0.15", "0.60").cost(1000, 500)
    Decimal('0.00045')
    """

    input_per_mtok: Decimal
    output_per_mtok: Decimal

    def __init__(self, input_per_mtok: Decimal | str | int | float, output_per_mtok: Decimal | str | int | float):
        object.__setattr__(self, "input_per_mtok", _decimal(input_per_mtok, "input_per_mtok"))
        object.__setattr__(self, "output_per_mtok", _decimal(output_per_mtok, "output_per_mtok"))

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / MILLION


def _decimal(value: Decimal | str | int | float, name: str) -> Decimal:
    # floats go through str() so that 0.15 means 0.15, not 0.1499999999999999944488848768742172978818416595458984375
    try:
        result = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except Exception:
        raise ConfigurationError(f"{name} must be a number of USD per million tokens, got {value!r}") from None
    if not result.is_finite() or result < 0:
        raise ConfigurationError(f"{name} must be a finite, non-negative number, got {value!r}")
    return result


@dataclass(frozen=True)
class CatalogPrice:
    """The price ``genai-prices`` publishes for a model (tiered prices included)."""

    model_ref: str
    provider_id: str | None = None

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        from genai_prices import Usage, calc_price

        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        return Decimal(calc_price(usage, model_ref=self.model_ref, provider_id=self.provider_id).total_price)


PriceSpec = Price | tuple[Decimal | str | int | float, Decimal | str | int | float] | Mapping[str, object]


def as_price(spec: PriceSpec, model: str) -> Price:
    """Accept a :class:`Price`, a ``(input, output)`` pair or ``{"input_per_mtok":.., "output_per_mtok":..}``."""
    if isinstance(spec, Price):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return TokenPrice(*spec)
    if isinstance(spec, Mapping) and {"input_per_mtok", "output_per_mtok"} <= set(spec):
        return TokenPrice(spec["input_per_mtok"], spec["output_per_mtok"])  # type: ignore[arg-type]
    raise ConfigurationError(
        f"price for model {model!r} must be a Price, an (input, output) pair or a mapping with "
        f"'input_per_mtok' and 'output_per_mtok' (USD per million tokens), got {spec!r}"
    )


def resolve_price(model: str, overrides: Mapping[str, PriceSpec] | None = None) -> Price:
    """The override for ``model`` if given, else its catalogue price; unknown is an error."""
    if overrides and model in overrides:
        return as_price(overrides[model], model)
    from genai_prices import Usage, calc_price

    try:
        calc_price(Usage(input_tokens=1, output_tokens=1), model_ref=model)
    except LookupError:
        raise UnknownPriceError(
            f"no known price for model {model!r}; pass prices={{{model!r}: (input_usd_per_mtok, "
            f"output_usd_per_mtok)}} to set it explicitly"
        ) from None
    return CatalogPrice(model)


PricePair = tuple[str, str]
"""``(input_per_mtok, output_per_mtok)`` as exact decimal strings (USD per million tokens)."""


def load_prices(path: str | Path) -> dict[str, tuple[str, str]]:
    """A prices file: ``{model: {"input_per_mtok": x, "output_per_mtok": y}}`` (USD per million tokens).

    Returns ``{model: (input_per_mtok, output_per_mtok)}`` as exact decimal strings, the shape
    ``resolve_price`` takes; a bad file is a :class:`DataError` naming the file and the model.

    >>> import json, tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    ...     json.dump({"gpt-x": {"input_per_mtok": 0.25, "output_per_mtok": 2}}, f)
    >>> load_prices(f.name)
    {'gpt-x': ('0.25', '2')}
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read prices ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object of model -> prices")
    prices: dict[str, tuple[str, str]] = {}
    for model, spec in raw.items():
        if not isinstance(spec, dict) or not {"input_per_mtok", "output_per_mtok"} <= set(spec):
            raise DataError(f"{path}: model {model!r} needs 'input_per_mtok' and 'output_per_mtok'")
        pair = []
        for name in ("input_per_mtok", "output_per_mtok"):
            value = spec[name]
            try:
                valid = isinstance(value, int | float | str) and not isinstance(value, bool)
                number = Decimal(str(value)) if valid else None
            except ArithmeticError:
                number = None
            if number is None or not number.is_finite() or number < 0:
                raise DataError(f"{path}: model {model!r} field {name!r} must be a number >= 0, got {value!r:.40}")
            pair.append(str(value))
        prices[model] = (pair[0], pair[1])
    return prices


def price_table(prices: Mapping[str, PricePair]) -> dict[str, dict[str, str]]:
    """``{model: {"input_per_mtok": .., "output_per_mtok": ..}}``: how a strategy file stores prices.

    >>> price_table({"gpt-x": ("0.25", "2")})
    {'gpt-x': {'input_per_mtok': '0.25', 'output_per_mtok': '2'}}
    """
    return {m: {"input_per_mtok": i, "output_per_mtok": o} for m, (i, o) in prices.items()}


def price_pairs(table: Mapping[str, Mapping[str, str]]) -> dict[str, PricePair]:
    """The inverse of :func:`price_table`: a strategy file's prices as ``{model: (input, output)}``.

    >>> price_pairs({"gpt-x": {"input_per_mtok": "0.25", "output_per_mtok": "2"}})
    {'gpt-x': ('0.25', '2')}
    """
    return {m: (p["input_per_mtok"], p["output_per_mtok"]) for m, p in table.items()}
