"""Settings of the backprop baselines: a frozen dataclass, every constant with its default."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ffint8.errors import ConfigError

BP_ALGOS = ("bp-fp32", "bp-int8", "bp-ui8", "bp-gdai8")
ROUNDINGS = ("stochastic", "nearest")
UI8_CLIPS = ("ratio", "absolute")


@dataclass(frozen=True)
class BPConfig:
    """What the int8 backprop baselines need beyond TrainConfig (docs/baselines.md).

    Clip search (bp-ui8 and bp-gdai8):
        search_period: P, iterations between two searches of a layer's clip (the first
            iteration always searches).
        ratio_min: smallest clip / max|g| the search tries.
        search_grid: points of the coarse log-spaced grid over [ratio_min, 1].
        search_refine: golden-section steps around the best grid point.
    bp-ui8 clip between searches:
        ui8_clip: "ratio" keeps c / max|g| from the last search and applies it to each new g;
            "absolute" keeps c itself (in gradient units).
    bp-ui8 learning-rate scaling, lr_l = lr * max(exp(-lr_alpha * d_l), lr_beta):
        lr_scaling: on or off; lr_alpha, lr_beta: the paper's alpha = 20, beta = 0.1.
    bp-gdai8 (an approximation; the paper's text is not available to us):
        gaussian_threshold: a layer's gradient is Gaussian-like when
            P(|g - mean| > std) > gaussian_threshold (DAI8's 0.3), else long-tailed.
        input_clip_search: also search the clip of the gradient that feeds g_x, by the cosine
            distance of that gradient itself; False: g_x uses max|g| (no clipping).
    Rounding in training (inference always rounds to nearest):
        grad_rounding: of the activation gradient (both backward GEMMs).
        act_rounding: of the layer input in the forward GEMM (weights always round to nearest).
    """

    search_period: int = 100
    ratio_min: float = 1e-3
    search_grid: int = 24
    search_refine: int = 16
    ui8_clip: str = "ratio"
    lr_scaling: bool = True
    lr_alpha: float = 20.0
    lr_beta: float = 0.1
    gaussian_threshold: float = 0.3
    input_clip_search: bool = True
    grad_rounding: str = "stochastic"
    act_rounding: str = "stochastic"

    def __post_init__(self) -> None:
        if self.search_period < 1:
            raise ConfigError(f"BPConfig.search_period must be at least 1, got {self.search_period}")
        if not 0 < self.ratio_min < 1:
            raise ConfigError(f"BPConfig.ratio_min must lie in (0, 1), got {self.ratio_min}")
        if self.search_grid < 3:
            raise ConfigError(f"BPConfig.search_grid must be at least 3, got {self.search_grid}")
        if self.search_refine < 0:
            raise ConfigError(f"BPConfig.search_refine must be >= 0, got {self.search_refine}")
        if not self.lr_alpha >= 0:
            raise ConfigError(f"BPConfig.lr_alpha must be >= 0, got {self.lr_alpha}")
        if not 0 < self.lr_beta <= 1:
            raise ConfigError(f"BPConfig.lr_beta must lie in (0, 1], got {self.lr_beta}")
        if not 0 < self.gaussian_threshold < 1:
            raise ConfigError(
                f"BPConfig.gaussian_threshold must lie in (0, 1), got {self.gaussian_threshold}")
        if self.ui8_clip not in UI8_CLIPS:
            raise ConfigError(f"invalid BPConfig.ui8_clip {self.ui8_clip!r}; choose one of: "
                              f"{', '.join(UI8_CLIPS)}")
        for name in ("grad_rounding", "act_rounding"):
            value = getattr(self, name)
            if value not in ROUNDINGS:
                raise ConfigError(f"invalid BPConfig.{name} {value!r}; choose one of: "
                                  f"{', '.join(ROUNDINGS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BPConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
