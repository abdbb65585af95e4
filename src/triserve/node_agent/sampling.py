"""Each tick's GPU sample: the backend's own reading, with dcgm-exporter activity merged in.

Component A of the controllers needs tensor/DRAM/SM activity. Hopper and newer report it
through the backend itself (NVML GPM); older GPUs have it only through dcgm-exporter, which
the agent scrapes (`triserve.node_agent.scraping`, parsed by `triserve.node_agent.dcgm`).
`GpuSampler` joins the two: `sample(index)` is the backend's sample, whose missing activity
is taken from the latest dcgm-exporter scrape of that GPU. The device's own counters always
win, since they cover exactly the tick's period while a scrape lags by up to its interval.

`triserve.node_agent.agent.NodeAgent` owns one sampler, feeds it every dcgm scrape
(`use_dcgm`), drops a scrape that grew too old (`expire_dcgm`), and hands each tick's sample
to the GPU's control loop (or keeps it for a GPU no loop governs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from triserve.gpu.backend import Activity, GpuBackend, GpuIdentity, GpuSample
from triserve.node_agent.dcgm import DcgmSnapshot


class GpuSampler:
    """Per-tick `GpuSample`s of one node's GPUs, activity filled from dcgm-exporter."""

    def __init__(self, backend: GpuBackend, dcgm_period_s: float = 30.0) -> None:
        """Sample `backend` (reads only: nothing here sets anything on a GPU).

        `dcgm_period_s` is dcgm-exporter's collection interval (its ``-c`` flag, 30 s by
        default): the period its activity fractions average over, stamped on that activity
        so that controllers needing the phase running now do not read it as a tick's.
        """
        self.backend = backend
        self.dcgm_period_s = dcgm_period_s
        self._dcgm_timestamp_s = 0.0
        #: GPU index → activity from the latest dcgm-exporter scrape (only GPUs it covers).
        self.dcgm_activity: dict[int, Activity] = {}

    def use_dcgm(self, snapshot: DcgmSnapshot | None, gpus: Iterable[GpuIdentity]) -> None:
        """Take the activity of `gpus` from a new scrape (None: no scrape, no activity)."""
        activity: dict[int, Activity] = {}
        if snapshot is not None:
            self._dcgm_timestamp_s = snapshot.timestamp_s
            for gpu in gpus:
                entry = snapshot.for_gpu(gpu.index, gpu.uuid)
                found = entry.activity() if entry is not None else None
                if found is not None:
                    activity[gpu.index] = replace(found, period_s=self.dcgm_period_s)
        self.dcgm_activity = activity

    def expire_dcgm(self, now_s: float, max_age_s: float) -> float | None:
        """Drop the scrape's activity once it is older than `max_age_s` at `now_s`.

        Returns its age in seconds when this call dropped it, else None (nothing held, or
        still fresh): a controller must not act on activity that no longer describes the GPU.
        """
        if not self.dcgm_activity:
            return None
        age_s = now_s - self._dcgm_timestamp_s
        if age_s <= max_age_s:
            return None
        self.dcgm_activity = {}
        return age_s

    def sample(self, index: int) -> GpuSample:
        """GPU `index` now; its activity from dcgm-exporter when the device reports none."""
        sample = self.backend.sample(index)
        if sample.activity is None:
            fallback = self.dcgm_activity.get(index)
            if fallback is not None:
                return replace(sample, activity=fallback)
        return sample
