"""What a model call costs: USD per million input / output tokens, computed with Decimal,
plus its built-in tool calls, priced per call (file search, web search).

The table is the default list of allowed models too (ATLAS_ALLOWED_MODELS overrides it).
Prices are OpenAI's list prices (standard tier) when this table was written; override a price
with ATLAS_MODEL_PRICES (JSON: {"model": [input_per_1m, output_per_1m]})."""

from __future__ import annotations

from decimal import Decimal

from atlas_gql.config import Settings

ONE_MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.000001")  # ApiUsageLog.cost_usd is NUMERIC(14, 6)

# model -> (USD per 1M input tokens, USD per 1M output tokens)
PRICE_TABLE: dict[str, tuple[Decimal, Decimal]] = {
    "gpt-5": (Decimal("1.25"), Decimal("10.00")),
    "gpt-5-mini": (Decimal("0.25"), Decimal("2.00")),
    "gpt-5-nano": (Decimal("0.05"), Decimal("0.40")),
    "gpt-4.1": (Decimal("2.00"), Decimal("8.00")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("1.60")),
    "gpt-4.1-nano": (Decimal("0.10"), Decimal("0.40")),
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "o3": (Decimal("2.00"), Decimal("8.00")),
    "o4-mini": (Decimal("1.10"), Decimal("4.40")),
}


def price_table(settings: Settings) -> dict[str, tuple[Decimal, Decimal]]:
    """The built-in table with the settings' overrides applied."""
    table = dict(PRICE_TABLE)
    for model, (input_price, output_price) in settings.atlas_model_prices.items():
        table[model] = (Decimal(str(input_price)), Decimal(str(output_price)))
    return table


def allowed_models(settings: Settings) -> list[str]:
    """Models an assistant may use: ATLAS_ALLOWED_MODELS, else the priced models."""
    if settings.atlas_allowed_models:
        return list(settings.atlas_allowed_models)
    return sorted(price_table(settings))


def cost_usd(settings: Settings, *, model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """The cost of one call in USD (0 for a model without a price), rounded to 1e-6."""
    table = price_table(settings)
    prices = table.get(model)
    if prices is None:
        # A dated snapshot ("gpt-4o-mini-2024-07-18") costs what its family costs.
        family = max(
            (name for name in table if model.startswith(name + "-")), key=len, default=None
        )
        prices = table.get(family) if family else None
    if prices is None:
        return Decimal(0)
    input_price, output_price = prices
    total = (
        Decimal(input_tokens) * input_price + Decimal(output_tokens) * output_price
    ) / ONE_MILLION
    return total.quantize(COST_QUANTUM)


def tool_cost_usd(settings: Settings, *, file_search_calls: int, web_search_calls: int) -> Decimal:
    """What a reply's tool calls cost in USD: ATLAS_FILE_SEARCH_CALL_USD and
    ATLAS_WEB_SEARCH_CALL_USD per call (OpenAI's list prices: $2.50 and $10 per 1,000 calls;
    the tokens of what the tools retrieved are billed as input tokens, counted already)."""
    file_search = Decimal(str(settings.atlas_file_search_call_usd))
    web_search = Decimal(str(settings.atlas_web_search_call_usd))
    total = file_search_calls * file_search + web_search_calls * web_search
    return total.quantize(COST_QUANTUM)
