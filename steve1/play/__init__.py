"""Playing whole episodes: the environments (MineRL's HumanSurvival or the stand-in world), the worker
holding an env and its agents, and the two stages that play (generate: VPT agents make data; rollout:
STEVE-1 plays prompts). Sits above ``data``, ``models`` and ``eval`` (it reads the programmatic metrics);
none of those imports it."""
