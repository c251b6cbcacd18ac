"""Agents: asyncio tasks with a name, a bounded mailbox and a lifecycle, run by a supervisor."""
