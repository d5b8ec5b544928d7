"""Peer wire protocol between coordinators (envelope, handshake, transport, peer manager).

Empty until the peer-protocol issue lands; nothing here knows of receipts or DA.
"""
