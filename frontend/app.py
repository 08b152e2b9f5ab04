"""ragstream's chat app (Streamlit). Talks to the backend over HTTP only (BACKEND_URL).

A first, plain face for the service: sign in, pick or start a conversation, and chat with
answers streamed token by token."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from frontend.client import BackendClient, BackendError, StreamedAnswer

BACKEND_URL = os.environ.get("BACKEND_URL", "http://127.0.0.1:8000")

st.set_page_config(page_title="ragstream", page_icon="💬")
state = st.session_state
state.setdefault("token", None)
state.setdefault("conversation_id", None)
client = BackendClient(BACKEND_URL, state.token)


def sign_in() -> None:
    st.title("ragstream")
    st.caption("Retrieval-augmented chat. Sign in or create an account.")
    login_tab, register_tab = st.tabs(["Sign in", "Create account"])
    with login_tab, st.form("login"):
        username = st.text_input("Username")
        password = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in"):
            try:
                state.token = client.login(username, password)
                st.rerun()
            except BackendError as exc:
                st.error(exc.message)
    with register_tab, st.form("register"):
        username = st.text_input("Username", key="new_username")
        password = st.text_input("Password (8 characters or more)", type="password", key="new_pw")
        if st.form_submit_button("Create account"):
            try:
                client.register(username, password)
                state.token = client.login(username, password)
                st.rerun()
            except BackendError as exc:
                st.error(exc.message)


def sidebar() -> None:
    with st.sidebar:
        if st.button("New conversation", use_container_width=True):
            state.conversation_id = None
            st.rerun()
        for conversation in client.conversations():
            label = conversation["title"]
            if conversation["id"] == state.conversation_id:
                label = f"**{label}**"
            if st.button(label, key=conversation["id"], use_container_width=True):
                state.conversation_id = conversation["id"]
                st.rerun()
        st.divider()
        if st.button("Sign out"):
            state.token, state.conversation_id = None, None
            st.rerun()


def chat() -> None:
    if state.conversation_id:
        for message in client.conversation(state.conversation_id)["messages"]:
            with st.chat_message(message["role"]):
                st.markdown(message["content"] or "_(no answer)_")
                if message["status"] != "complete":
                    st.caption(f"status: {message['status']}")
    if prompt := st.chat_input("Ask something"):
        with st.chat_message("user"):
            st.markdown(prompt)
        answer = StreamedAnswer()
        with st.chat_message("assistant"):
            st.write_stream(client.stream_chat(prompt, state.conversation_id, answer))
            if answer.error:
                st.error(answer.error["message"])
            elif answer.done:
                timings = answer.done["timings"]
                st.caption(
                    f"{answer.meta.get('model')} · first token {timings['ttft_ms']:.0f} ms · "
                    f"total {timings['total_ms']:.0f} ms"
                )
        state.conversation_id = answer.meta.get("conversation_id", state.conversation_id)
        st.rerun()


if state.token is None:
    sign_in()
else:
    try:
        sidebar()
        chat()
    except BackendError as exc:
        if exc.status == 401:
            state.token = None
            st.warning("Your session has expired; please sign in again.")
            st.button("Sign in")
        else:
            st.error(exc.message)
            st.button("Retry")
