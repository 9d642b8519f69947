"""Herald's command set, in the order people see it (/help, the platforms' menus)."""

from __future__ import annotations

from core.commands.accounts import AccountCommands
from core.commands.chat import ChatCommands, HelpCommand
from core.commands.drafts import DraftCommands
from core.commands.history import HistoryCommands
from core.commands.registry import CommandRegistry
from core.commands.schedule import ScheduleCommands
from core.commands.search import SearchCommands
from core.commands.summary import SummaryCommands
from core.commands.web import WebCommands


def herald_commands(
    chat: ChatCommands,
    drafts: DraftCommands,
    schedules: ScheduleCommands | None = None,
    history: HistoryCommands | None = None,
    search: SearchCommands | None = None,
    web: WebCommands | None = None,
    summaries: SummaryCommands | None = None,
    accounts: AccountCommands | None = None,
) -> CommandRegistry:
    registry = CommandRegistry()
    for spec in (*chat.specs(), *drafts.specs(), HelpCommand(registry).spec()):
        registry.add(spec)
    if schedules is not None:
        registry.add(schedules.spec())
    if history is not None:
        registry.add(history.spec())
    if search is not None:
        registry.add(search.spec())
    if summaries is not None:
        for spec in summaries.specs():
            registry.add(spec)
    if accounts is not None:
        registry.add(accounts.spec())
    if web is not None:
        registry.add(web.spec())
    return registry
