"""The kernel manager the repository's ``voila.json`` gives Voilà: idle kernels of closed pages are culled, the
pre-started ("pre-heated") kernel waiting for the next visitor is not.

Voilà starts one kernel per page. ``voila.json`` (next to this README, read by ``voila`` started from the
repository root) makes closed pages' kernels go away two ways: the shutdown request the page sends when it
closes is accepted, and a kernel without a page that has been idle for two minutes is culled (a browser that
crashed sends no request). It also keeps one kernel pre-started with the notebook already run, so a page opens
in about a second or two instead of four to six; Jupyter Server's culler cannot tell that kernel from an
abandoned one, hence this class.

Usage (what ``voila.json`` says)::

    {"VoilaConfiguration": {"preheat_kernel": true,
                            "multi_kernel_manager_class": "similar_images.apps.voila_kernels.PoolKernelManager"}}
"""

from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

__all__ = ["PoolKernelManager", "pooled_kernel_ids"]


def pooled_kernel_ids(manager: Any) -> set[str]:
    """Ids of the kernels waiting in Voilà's pre-heated pools (started, not yet given to a page)."""
    ids = set()
    for pool in getattr(manager, "_pools", {}).values():
        for task in pool:
            if task.done() and not task.cancelled() and task.exception() is None:
                result = task.result()
                if isinstance(result, dict) and result.get("kernel_id"):
                    ids.add(str(result["kernel_id"]))
    return ids


class PoolKernelManager(AsyncMappingKernelManager):
    """Jupyter Server's kernel manager, whose idle culler leaves Voilà's pre-heated kernels alone."""

    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        if kernel_id in pooled_kernel_ids(self):
            return
        await super().cull_kernel_if_idle(kernel_id)
