"""Checks of the SecAgg+ keys, run by the loader with every other cross-check."""

from __future__ import annotations

from fedtrain.config.schema import RunConfig

__all__ = ["MEAN_STRATEGIES", "check_secagg"]

# Strategies that aggregate a weighted mean of the updates: the one thing SecAgg+ reveals.
MEAN_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm")


def _count(value: float) -> bool:
    return value > 1


def check_secagg(cfg: RunConfig) -> list[str]:
    """Problems of the SecAgg+ settings (each names the key and the fix)."""
    s, problems = cfg.secagg, []
    if s.secure_aggregation and cfg.strategy.round_exchange not in ("message", "secaggplus"):
        problems.append(
            f"secure-aggregation=true and round-exchange={cfg.strategy.round_exchange!r} name two exchanges; drop one"
        )
    if cfg.exchange != "secaggplus":
        return problems
    if cfg.strategy.strategy not in MEAN_STRATEGIES:
        problems.append(
            f"strategy={cfg.strategy.strategy!r} needs every client's update, which SecAgg+ hides (the server sees "
            f"only their weighted mean); use one of {', '.join(MEAN_STRATEGIES)}"
        )
    if cfg.user_dp and cfg.privacy.dp_user_clipping != "client":
        problems.append(
            f"dp-user-clipping={cfg.privacy.dp_user_clipping!r} with SecAgg+: the server cannot clip (or count "
            "clipped) updates it cannot see; use dp-user-clipping='client' (each client clips before masking, the "
            "server adds noise to the unmasked mean)"
        )
    if cfg.strategy.min_clients < 2:
        problems.append("SecAgg+ needs at least 2 clients per round: set min-clients >= 2")
    shares, threshold = s.secagg_num_shares, s.secagg_reconstruction_threshold
    if _count(shares) and (shares != int(shares) or shares <= 2):
        problems.append(f"secagg-num-shares={shares:g}: a count must be a whole number above 2 (Flower's rule), or "
                        "give a fraction <= 1 of the sampled clients")  # fmt: skip
    elif _count(shares) and int(shares) % 2 == 0:
        problems.append(f"secagg-num-shares={shares:g}: use an odd count (Flower 1.42 halts every round in share keys "
                        "with an even count below the number of sampled clients)")  # fmt: skip
    if _count(threshold) and threshold != int(threshold):
        problems.append(f"secagg-reconstruction-threshold={threshold:g}: a count must be a whole number")
    if _count(shares) and _count(threshold) and threshold >= shares:
        problems.append(
            f"secagg-reconstruction-threshold={threshold:g} must be below secagg-num-shares={shares:g}, or "
            "no lost client could be recovered"
        )
    q, m = s.secagg_quantization_range, s.secagg_modulus_range
    if m & (m - 1) or m <= q:
        problems.append(
            f"secagg-modulus-range={m} must be a power of two above secagg-quantization-range={q} (e.g. 2^32)"
        )
    elif _count(shares) and shares > m // q:
        problems.append(f"secagg-num-shares={shares:g} above secagg-modulus-range / secagg-quantization-range = "
                        f"{m // q} risks overflow of the masked sums")  # fmt: skip
    return problems
