"""The aiohttp web app: WeChat webhook, conversation engine, chat simulator."""
