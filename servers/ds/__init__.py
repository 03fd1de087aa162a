"""DS, the data store server: typed keys with owners, subscriptions, label lookup.

``store`` holds the rules (no IPC), ``main`` the server loop; run it as
``python -m hwl.servers.ds`` (RS does). The client calls are ``hwl.system.ds``.
"""
