"""The one settings object: typed, frozen, from a TOML file plus ``DELAYWATCH_*`` variables.

No other module reads configuration. Every field has an embedded default, so the demo and
``replay`` need no file at all; ``delaywatch ... --config FILE`` adds a TOML file and
environment variables (``DELAYWATCH_SHARDS=16``, ``DELAYWATCH_STALL__MARGIN=2``) override both.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["IncidentSettings", "Settings", "StallSettings", "SmtpSettings", "load_settings"]


def _off(value: Any) -> Any:
    """``"off"`` turns an optional knob off: TOML has no null, and an environment variable
    is a string (``tell_horizon_hours = "off"``, ``DELAYWATCH_INCIDENTS__LATE_MOVE_P=off``)."""
    if isinstance(value, str) and value.strip().lower() in ("off", "null", "none"):
        return None
    return value


#: a number, or off (``None``; ``"off"`` in a TOML file or the environment)
OptionalFloat = Annotated[float | None, BeforeValidator(_off)]


def _divides_a_day(hours: int | None) -> int | None:
    if hours is not None and (hours < 1 or 24 % hours):
        raise ValueError(f"must divide 24 (1, 2, 3, 4, 6, 8, 12 or 24), got {hours}")
    return hours


#: hours that divide a day, or off
DayPhase = Annotated[int | None, BeforeValidator(_off), AfterValidator(_divides_a_day)]


class StallSettings(BaseModel):
    """Thresholds of the stall detector (see detectors.stall.StallDetector).

    Defaults chosen on the simulator (demo seeds 1-3 and quiet; README "Detection quality"):
    a very high quantile, because a package has ~10 gaps and a false alert rate of 2 per
    1,000 packages needs a per-gap rate near 2 per 10,000; enough samples for P² to estimate it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    q: float = Field(0.999, gt=0, lt=1, description="quantile of the learned silence")
    margin: float = Field(1.25, gt=0, description="threshold = margin x quantile")
    min_threshold_hours: float = Field(6.0, ge=0)
    min_samples: int = Field(2000, ge=1, description="gaps a stage needs before it is used")
    min_span_hours: float = Field(
        36.0, ge=0, description="event time a stage must have covered before it is used")
    allowed_lateness_seconds: int = Field(
        6 * 3600, ge=0, description="how far the watermark trails the newest event time")
    bucket_seconds: int = Field(900, ge=60, description="time-wheel bucket width")
    ttl_days: float = Field(30.0, gt=0, description="forget packages silent this long")
    finished_retention_days: float = Field(
        3.0, ge=0, le=10, description="remember delivered/returned packages this long: their "
        "header seen again is ignored, not a new package (0 = off)")
    eta_sample_every: int = Field(8, ge=0, description="1 in N packages teach the ETA model")
    eta_phase_hours: DayPhase = Field(
        3, description="the ETA model learns the time to delivery per time of day of the "
        "scan, in phases this many hours wide (a divisor of 24), at plants and distribution "
        "centres (whether a package catches tonight's sort); \"off\": over the whole day. "
        "A snapshot keeps the phases it was taken with")
    tell_horizon_hours: OptionalFloat = Field(
        24.0, gt=0, description="a silent package whose promise is further off than this is "
        "not told yet: its alert waits until this many hours before the promise (and never "
        "comes before its stall threshold), and goes out only if it is still silent then "
        "(\"off\": told as soon as it stalls, whatever its promise; packages already put off "
        "when a snapshot is resumed with \"off\" keep their put-off deadline; "
        "bench/RESULTS.md, \"Telling a package with days to spare later\")")
    holidays: tuple[date, ...] = Field(
        (), description="days without delivery (YYYY-MM-DD): waits over them are not stalls")


class IncidentSettings(BaseModel):
    """Facility incidents: statistics per facility window, the detector, the lifecycle and how
    stall alerts fold into incidents (see detectors.facility, detectors.incidents,
    detectors.folding and notifiers.grouping). Defaults measured in bench/RESULTS.md,
    "Facility detectors"."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = Field(True, description="detect facility incidents and fold stall alerts")
    detector: Literal["retention", "seasonal", "drift", "hst"] = "retention"
    window_seconds: int = Field(900, ge=60, description="facility window width (event time)")
    lateness_seconds: int = Field(
        3600, ge=0, description="facility windows close this long after the newest event "
        "time; later scans count as late (a feed outage's signature)")
    warm_up_hours: float = Field(
        24.0, ge=0, description="a facility's incidents count only after its first this many "
        "hours of event time (its models learn meanwhile)")
    weather_delay: float = Field(
        0.7, gt=0, description="a hub counts towards its region's weather at this delay score "
        "(one hub alone needs open_threshold): 0.7 caught a demo weather incident 6 h earlier "
        "and raised the national sample's false incidents from 1 to 5; 1.0 is conservative "
        "(bench/RESULTS.md)")
    open_threshold: float = Field(1.0, gt=0)
    close_threshold: float = Field(0.5, gt=0)
    for_windows: int = Field(2, ge=1, description="windows over the threshold to open")
    clear_windows: int = Field(8, ge=1, description="windows under the threshold to resolve")
    watch_fraction: float = Field(
        0.85, ge=0, lt=1, description="a package silent for this share of its stall threshold "
        "is watched: if an incident holds its facility, its customer hears of it then, before "
        "the stall threshold (0 = only stall alerts are folded). 0.5 folds more packages but "
        "many of them arrive on time (demo seeds 1-3: precision 0.94, 0.63, 0.74 at 0.5; "
        "0.98, 0.96, 0.97 at 0.85; bench/RESULTS.md)")
    hold_factor: float = Field(
        1.0, ge=0, description="when a delay incident opens, packages held at its facility "
        "that are silent for this many times their stage's usual silence hear of it at once "
        "(several shards: such packages are watched from then on, and hear of an incident "
        "when it opens or at once if one holds them)")
    hold_horizon_hours: float = Field(
        12.0, ge=0, description="...and due within this many hours (a package with time to "
        "spare will most likely still arrive on time: telling it would be a false alarm; demo "
        "seeds 1-3, hold_factor 1: precision 0.67/0.60/0.79 at 24 h, 0.99/0.97/0.98 at 12 h)")
    late_move_p: OptionalFloat = Field(
        0.9, ge=0, le=1, description="a package nobody was told about that moves on after "
        "hold_factor x its stage's usual silence at a facility, a lane or a region with a "
        "delay incident, and whose usual estimate from the new scan misses its promise with "
        "this probability or more, is told of the incident then, with that estimate (a "
        "package due later than hold_horizon_hours is not told when the incident opens: "
        "whether it ends up late depends on how long the incident lasts). On demo seeds "
        "1-6, 0.9 told more of the incident-late packages on 5 of 6 (e.g. 0.21 -> 0.32, "
        "0.38 -> 0.86) for at most 0.35 more false alerts per 1,000; 0.7 cost up to 8 per "
        "1,000 (bench/RESULTS.md); \"off\": never")
    late_again_p: OptionalFloat = Field(
        0.93, ge=0, le=1, description="a package a delay incident held that "
        "moved on still on time by late_move_p is looked at again at each later scan, and "
        "told of the incident (with the estimate from that scan) at the first whose estimate "
        "misses the promise with this probability or more: the scan right after a hold often "
        "cannot know yet that the package missed its sort or its truck. On demo seeds 1-3 "
        "0.93 told 0.17/0.27/0.37 of the late packages before their promise instead of "
        "0.14/0.21/0.25, for 1 more false alert on demo3 and none on demo 1-2; 0.9 cost 1/5/3 "
        "(bench/RESULTS.md); \"off\": never. Several shards: every hold left on time goes "
        "to the network step, which keeps those an incident covered (demo seeds 1-3, two "
        "shards: late recall 0.25/0.35/0.38 -> 0.38/0.47/0.53, as one shard's)")
    lane_wait_hours: float = Field(
        6.0, ge=0, description="a package that comes off the road late (see late_move_p) is "
        "held only by the lane incident of the lane it came by, and one that opens up to this "
        "many hours after it arrived still does: a lane incident opens on the late arrivals, "
        "this one's among them (its message waits as long). On demo seeds 1-3, 6 h told 8 "
        "more lane-late packages (5 on demo2, 3 on demo3), their arrivals 21-28 h before "
        "the promise, for 2 more false alerts on demo3; 3 h, 4 for 1 (bench/RESULTS.md)")
    grace_seconds: int = Field(
        3600, ge=0, description="an incident opened this long after a stall alert still "
        "claims it (the alert waits for the incidents up to then)")
    hold_seconds: int = Field(
        2 * 3600, ge=0, description="an incident message waits this long (event time) for "
        "more packages of the same customer")
    max_auto_facilities: int = Field(
        2000, ge=1, description="without a facility list, the most facilities that get "
        "incident statistics (those seen with a plant's scan code, first come first kept; "
        "~0.5 MB and 12 metric series each): a feed that codes thousands of delivery units "
        "as plants cannot exhaust the memory. Scans at the others are counted in "
        "delaywatch_facility_scans_over_cap and a warning is logged once. Each shard keeps "
        "its own list: with several shards, up to shards x this many, and a facility kept "
        "by only some shards is assessed on part of its volume")
    write_facility_windows: bool = Field(
        True, description="write each monitored facility's figures and scores per window to "
        "RUNDIR/facility_windows.jsonl and the delaywatch_facility_* metrics (~460 bytes "
        "per facility and window: ~12 MB a day for 270 hubs, in one file that is not "
        "rotated; a daemon that only needs the metrics can turn the file off)")

    @model_validator(mode="after")
    def _hysteresis(self) -> IncidentSettings:
        if self.close_threshold > self.open_threshold:
            raise ValueError(f"close_threshold ({self.close_threshold}) must not exceed "
                             f"open_threshold ({self.open_threshold}): an incident resolves "
                             "below the one and opens above the other")
        return self


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file")
    return path


ExistingFile = Annotated[Path, AfterValidator(_existing)]


# for the local demo server only: SmtpSettings.unready_for refuses them for any other relay
_EXAMPLE_SENDER = "delaywatch <alerts@delaywatch.example.com>"
_EXAMPLE_UNSUBSCRIBE_URL = "https://delaywatch.example.com/unsubscribe"
_EXAMPLE_SECRET = "change-me-in-production"  # noqa: S105 (refused off the demo)


class SmtpSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str = "127.0.0.1"
    port: int = 8025
    username: str | None = None
    password: SecretStr | None = None
    start_tls: bool = False
    timeout_seconds: float = Field(30.0, gt=0, description="wait for each SMTP reply")
    data_timeout_seconds: float = Field(
        600.0, gt=0, description="wait for the reply to a message's end (RFC 5321: 10 "
        "minutes); a message left without one may have arrived and is sent again only "
        "after backoff_max_seconds")
    sender: str = _EXAMPLE_SENDER
    unsubscribe_url: str = _EXAMPLE_UNSUBSCRIBE_URL
    unsubscribe_secret: SecretStr = SecretStr(_EXAMPLE_SECRET)
    max_attempts: int = Field(8, ge=1)
    backoff_base_seconds: float = Field(30.0, gt=0)
    backoff_max_seconds: float = Field(3600.0, gt=0)
    quiet_hours: bool = True
    unknown_customer_wait_hours: float = Field(
        12.0, ge=0, description="a message to a customer missing from the customer table "
        "waits this long from when it was made (the table may lag the feed), then fails")
    keep_days: float = Field(
        30.0, ge=1, description="`send` deletes the outbox rows that are done with (sent, "
        "failed, suppressed, superseded) this many days after their last change: at national "
        "volume the outbox grows by hundreds of MB a day. A row's key keeps a replay resumed "
        "from the recovery store (seconds to minutes back) from sending it again, so this "
        "must be longer than any resume reaches back")

    def unready_for(self, host: str, port: int) -> list[str]:
        """What must be set before messages go to the relay at ``host:port``: the built-in
        examples of the sender, the unsubscribe page and its secret are for a local test
        server only (with the example secret anyone could make every customer's unsubscribe
        link). [] for a loopback relay on a port other than a mail server's (25, 465, 587:
        a local MTA forwards to the world), or when all three are set.

        >>> SmtpSettings().unready_for("127.0.0.1", 8025)
        []
        >>> [p.split(" ")[0] for p in SmtpSettings().unready_for("smtp.example.org", 8025)]
        ['smtp.sender', 'smtp.unsubscribe_url', 'smtp.unsubscribe_secret']
        >>> len(SmtpSettings().unready_for("localhost", 25))
        3
        """
        if host.strip("[]").lower() in ("127.0.0.1", "localhost", "::1") and \
                port not in (25, 465, 587):
            return []
        problems = []
        if self.sender == _EXAMPLE_SENDER:
            problems.append("smtp.sender is the built-in example address "
                            "(DELAYWATCH_SMTP__SENDER)")
        if self.unsubscribe_url == _EXAMPLE_UNSUBSCRIBE_URL:
            problems.append("smtp.unsubscribe_url is the built-in example page "
                            "(DELAYWATCH_SMTP__UNSUBSCRIBE_URL)")
        if self.unsubscribe_secret.get_secret_value() == _EXAMPLE_SECRET:
            problems.append("smtp.unsubscribe_secret is the built-in example, with which anyone "
                            "could make any customer's unsubscribe link "
                            "(DELAYWATCH_SMTP__UNSUBSCRIBE_SECRET)")
        return problems


class Settings(BaseSettings):
    """All of delaywatch's settings."""

    model_config = SettingsConfigDict(
        env_prefix="DELAYWATCH_", env_nested_delimiter="__", frozen=True, extra="forbid")

    mode: Literal["replay", "live"] = "replay"
    shards: int = Field(
        1, ge=1, le=4096, description="state shards (keys of stateful_batch); more than one "
        "only pays with several workers, and each shard's detector learns from its share")
    processes: int = Field(
        1, ge=1, le=256, description="processes of one Bytewax cluster on this machine "
        "(flows.cluster): process 0 reads and parses the feed, each holds whole shards "
        "(at least one each: shards >= processes; set nowhere, shards = processes); a "
        "recovery store resumes only with the process and shard counts that wrote it")
    batch_size: int = Field(2000, ge=1, le=100_000, description="lines per source batch")
    speed: float = Field(0.0, ge=0, description="replay pacing: 0 = as fast as possible")
    feed_silence_hold_seconds: int = Field(
        600, ge=0, description="live: the clock moves with wall time at most this long "
        "after the last event, then holds (a silent feed is not a silent network)")
    follow_poll_seconds: float = Field(
        1.0, gt=0, le=60, description="replay --follow: how often to look for new lines, a "
        "rotation or a truncation while the feed has nothing new")
    follow_rotate_grace_seconds: float = Field(
        5.0, ge=0, le=3600, description="replay --follow: a rotated file is read on until it "
        "has been unchanged this long (its writer may still finish a line or take a moment "
        "to move to the new file)")
    epoch_interval_seconds: float = Field(10.0, gt=0)
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 = no metrics server")
    metrics_host: str = Field(
        "127.0.0.1", description="address the metrics server listens on (0.0.0.0: every "
        "interface, for a Prometheus on another host)")
    # a path given must exist: a mistyped one would silently run without names, time zones
    # and regions (no weather incidents)
    facilities: ExistingFile | None = None
    customers: ExistingFile | None = None
    stall: StallSettings = StallSettings()
    incidents: IncidentSettings = IncidentSettings()
    smtp: SmtpSettings = SmtpSettings()

    @model_validator(mode="before")
    @classmethod
    def _a_shard_a_process(cls, data: Any) -> Any:
        """``shards`` set nowhere (arguments, environment, file): one per process."""
        if isinstance(data, dict) and data.get("shards") is None:
            try:
                processes = int(data.get("processes") or 1)
            except (TypeError, ValueError):
                return data  # (the field's own validation says what is wrong)
            if processes > 1:
                data = {**data, "shards": processes}
        return data

    @model_validator(mode="after")
    def _shards_per_process(self) -> Settings:
        if self.shards < self.processes:
            raise ValueError(f"shards ({self.shards}) must be at least processes "
                             f"({self.processes}): each process holds whole shards")
        if self.processes > 1 and self.metrics_port + self.processes - 1 > 65535:
            raise ValueError(f"metrics_port {self.metrics_port} + processes - 1 is past 65535: "
                             "process i serves its metrics on metrics_port + i")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _TOML_FILE[0]
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (TOML, optional), the environment, and ``overrides``.

    Raises ``ValueError`` naming the key and the allowed values when something is off.
    """
    if path is not None and not Path(path).is_file():
        raise ValueError(f"config file {path} does not exist")

    unknown = sorted(name for name in os.environ
                     if name.upper().startswith(_ENV_PREFIX) and not _known_env(name))
    if unknown:  # (pydantic-settings ignores them: a typo would run on the default)
        raise ValueError(f"unknown setting in the environment: {', '.join(unknown)} (nested "
                         f"keys with __, e.g. {_ENV_PREFIX}STALL__MARGIN)")
    values = {k: v for k, v in overrides.items() if v is not None}
    _TOML_FILE[0] = path
    try:
        return Settings(**values)
    finally:
        _TOML_FILE[0] = None


_TOML_FILE: list[Path | None] = [None]
_ENV_PREFIX = "DELAYWATCH_"


def _known_env(name: str) -> bool:
    """``DELAYWATCH_A`` or ``DELAYWATCH_A__B`` names a setting or section ``a`` (a section's
    unknown key is refused by the section itself, as in a TOML file)."""
    return name[len(_ENV_PREFIX):].lower().split("__")[0] in Settings.model_fields
