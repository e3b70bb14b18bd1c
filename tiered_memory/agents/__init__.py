"""Agents that share memories: the hub (registry, grants, shared memories, history), an agent's
handle, notifications and the hub's records in the store's extra database."""

from tiered_memory.agents.agent import Agent, Entry
from tiered_memory.agents.hub import AgentHub, SharedInfo, Version, hub_for
from tiered_memory.agents.store import Notification

__all__ = ["Agent", "AgentHub", "Entry", "Notification", "SharedInfo", "Version", "hub_for"]
