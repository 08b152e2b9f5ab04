"""ragstream's chat app (Streamlit). Talks to the backend over HTTP only (BACKEND_URL).

Sign in, pick or start a conversation, ask: answers stream token by token with their
numbered sources; the sidebar holds the conversations and the retrieval controls; the
Documents tab uploads and lists what the answers draw on."""

from __future__ import annotations

import html
import json
import os
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from frontend.client import BackendClient, BackendError, StreamedAnswer

DEFAULT_BACKEND_URL = "http://127.0.0.1:8000"
OPERATORS = ["=", "≠", ">", "≥", "<", "≤", "in", "not in", "exists"]
OPERATOR_CODES = {
    "=": "$eq", "≠": "$ne", ">": "$gt", "≥": "$gte", "<": "$lt", "≤": "$lte",
    "in": "$in", "not in": "$nin", "exists": "$exists",
}  # fmt: skip
FOLLOW_UP_QUERIES = {
    "default": "the server's choice (RETRIEVAL_QUERY)",
    "context": "the question with the conversation's earlier questions",
    "rewrite": "a standalone query the model writes",
    "question": "the question alone",
}


def session_client() -> BackendClient:
    """This browser session's client (one HTTP connection pool per session), holding the
    session's current token."""
    state = st.session_state
    for key in ("token", "conversation_id", "filter_error", "notice"):
        state.setdefault(key, None)
    url = os.environ.get("BACKEND_URL", DEFAULT_BACKEND_URL).rstrip("/")
    if "client" not in state or state.client.base_url != url:
        if "client" in state:
            state.client.close()
        state.client = BackendClient(url)
    client: BackendClient = state.client
    client.token = state.token
    return client


# --- signing in ----------------------------------------------------------------------------
def app_url() -> str:
    """This app's address as the browser sees it (where a sign-in returns)."""
    given = os.environ.get("APP_PUBLIC_URL")
    if given:
        return given.rstrip("/") + "/"
    return (st.context.url or "").split("?", 1)[0]


def backend_public_url(client: BackendClient) -> str:
    """The backend's address as the browser sees it (BACKEND_PUBLIC_URL, else BACKEND_URL)."""
    return os.environ.get("BACKEND_PUBLIC_URL", client.base_url).rstrip("/")


def sign_in_options(client: BackendClient) -> dict[str, Any]:
    """How one may sign in here (kept for the session); the password form alone when the
    backend cannot say (its error then shows at the first sign-in)."""
    state = st.session_state
    if not state.get("providers"):
        try:
            state.providers = client.providers()
        except BackendError:
            return {"registration": "open", "oidc": False, "user_keys": "off"}
    return state.providers


def provider_sign_in(client: BackendClient, providers: dict[str, Any]) -> None:
    """The 'Sign in with …' button: the browser goes to the backend's login (then the
    provider), and comes back here with a one-time ticket."""
    if not providers.get("oidc"):
        return
    login = f"{backend_public_url(client)}/auth/oidc/login?" + urlencode({"next": app_url()})
    st.markdown(
        f'<a href="{html.escape(login)}" target="_self" class="ragstream-oidc" '
        'style="display:inline-block;padding:0.5rem 1rem;border-radius:0.5rem;'
        'background:#ff9d00;color:#000;text-decoration:none;font-weight:600">'
        f"Sign in with {html.escape(providers['oidc_name'] or 'your provider')}</a>",
        unsafe_allow_html=True,
    )


def redeem_ticket(client: BackendClient) -> None:
    """Back from the provider with `?sign_in=<ticket>`: the ticket traded for a token."""
    ticket = st.query_params.get("sign_in")
    if not ticket:
        return
    del st.query_params["sign_in"]
    try:
        st.session_state.token = client.redeem(ticket)
        st.session_state.notice = None
    except BackendError as exc:
        st.session_state.notice = f"Signing in failed: {exc.message}"


def sign_in(client: BackendClient) -> None:
    state = st.session_state
    st.title("ragstream")
    st.caption("Retrieval-augmented chat. Sign in or create an account.")
    if state.notice:
        st.warning(state.notice)
    providers = sign_in_options(client)
    provider_sign_in(client, providers)
    if providers.get("registration") == "oidc":
        st.caption("New accounts are created by signing in with the provider.")
    open_registration = providers.get("registration") == "open"
    tabs = st.tabs(["Sign in", "Create account"] if open_registration else ["Sign in"])
    with tabs[0], st.form("login"):
        username = st.text_input("Username")
        password = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in"):
            try:
                state.token = client.login(username, password)
                state.notice = None
                st.rerun()
            except BackendError as exc:
                st.error(exc.message)
    if not open_registration:
        return
    with tabs[1], st.form("register"):
        username = st.text_input("Username", key="new_username")
        password = st.text_input("Password (8 characters or more)", type="password", key="new_pw")
        if st.form_submit_button("Create account"):
            try:
                client.register(username, password)
                state.token = client.login(username, password)
                state.notice = None
                st.rerun()
            except BackendError as exc:
                st.error(exc.message)


# --- sidebar: conversations and retrieval controls -------------------------------------
def conversations_panel(client: BackendClient) -> None:
    state = st.session_state
    st.sidebar.header("Conversations")
    if st.sidebar.button("+ New conversation", use_container_width=True):
        state.conversation_id = None
        st.rerun()
    for conversation in client.conversations():
        current = conversation["id"] == state.conversation_id
        label = ("▸ " if current else "") + conversation["title"]
        if st.sidebar.button(label, key=f"open-{conversation['id']}", use_container_width=True):
            state.conversation_id = conversation["id"]
            st.rerun()
    if state.conversation_id:
        with st.sidebar.expander("Rename or delete this conversation"):
            title = st.text_input("New title", key="rename_title")
            if st.button("Rename", key="rename") and title.strip():
                client.rename_conversation(state.conversation_id, title.strip())
                st.rerun()
            sure = st.checkbox("Yes, delete it and its messages", key="confirm_delete")
            if st.button("Delete", key="delete", disabled=not sure):
                client.delete_conversation(state.conversation_id)
                state.conversation_id = None
                st.rerun()


def _value(text: str) -> Any:
    """A typed filter value: numbers and booleans as such, lists split on commas."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def retrieval_panel() -> dict[str, Any]:
    """The retrieval options of the next answer, as the API takes them."""
    state = st.session_state
    with st.sidebar.expander("Retrieval", expanded=False):
        enabled = st.toggle("Search my documents", value=True, key="rag_on")
        spaces = st.multiselect(
            "Namespaces", ["private", "shared"], default=["private", "shared"], key="rag_ns"
        )
        top_k = st.slider("Passages (top_k)", 1, 20, 5, key="rag_top_k")
        alpha = st.slider("Keyword ◀ mix ▶ meaning (alpha)", 0.0, 1.0, 0.5, 0.05, key="rag_alpha")
        follow_ups: str = st.selectbox(
            "Follow-up questions search for",
            list(FOLLOW_UP_QUERIES.keys()),
            format_func=lambda way: FOLLOW_UP_QUERIES[way],
            key="rag_query",
        )
        st.caption("Metadata filter")
        conditions = []
        for row in range(3):
            field, operator, value = st.columns([3, 2, 3])
            name = field.text_input("Field", key=f"f_field_{row}", label_visibility="collapsed",
                                    placeholder="field")  # fmt: skip
            op = operator.selectbox("Operator", OPERATORS, key=f"f_op_{row}",
                                    label_visibility="collapsed")  # fmt: skip
            raw = value.text_input("Value", key=f"f_value_{row}", label_visibility="collapsed",
                                   placeholder="value")  # fmt: skip
            if name.strip():
                code = OPERATOR_CODES[op]
                if code in ("$in", "$nin"):
                    operand: Any = [_value(v) for v in raw.split(",") if v.strip()]
                elif code == "$exists":
                    operand = raw.strip().lower() != "false"
                else:
                    operand = _value(raw)
                conditions.append({name.strip(): {code: operand}})
        expert = st.text_area("Or a filter as JSON (wins over the rows)", key="f_json",
                              placeholder='{"year": {"$gte": 2020}}')  # fmt: skip
        filter_: Any = None
        if expert.strip():
            try:
                filter_ = json.loads(expert)
            except json.JSONDecodeError as exc:
                st.error(f"Not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
        elif conditions:
            filter_ = conditions[0] if len(conditions) == 1 else {"$and": conditions}
        if state.filter_error:
            st.error(state.filter_error)
    options: dict[str, Any] = {"enabled": enabled, "top_k": top_k, "alpha": alpha}
    if follow_ups != "default":
        options["query"] = follow_ups
    if spaces:
        options["namespaces"] = spaces
    if filter_ is not None:
        options["filter"] = filter_
    return options


# --- the chat ------------------------------------------------------------------------------
def _source_label(number: int, source: dict[str, Any]) -> str:
    meta = source.get("metadata") or {}
    name = meta.get("title") or meta.get("source") or source["document_id"]
    return f"[{number}] {name} · score {source['score']:.3f}"


def show_sources(sources: list[dict[str, Any]]) -> None:
    if not sources:
        return
    with st.expander(f"Sources ({len(sources)})"):
        for number, source in enumerate(sources, 1):
            st.markdown(f"**{_source_label(number, source)}**")
            st.caption(source["text"])


def show_feedback(client: BackendClient, message: dict[str, Any]) -> None:
    state = st.session_state
    given = message.get("feedback")
    up, down, note = st.columns([1, 1, 3])
    for column, rating, label, icon in ((up, 1, "Good", "👍"), (down, -1, "Bad", "👎")):
        key = f"{'up' if rating > 0 else 'down'}-{message['id']}"
        if column.button(label, key=key, icon=icon, help=f"Rate this answer: {label.lower()}"):
            client.feedback(message["id"], rating, state.get(f"comment-{message['id']}") or None)
            st.rerun()  # show the rating as stored
    with note.popover("Comment"):
        st.text_input("Comment (sent with Good or Bad)", key=f"comment-{message['id']}")
    if given:
        st.caption(f"You rated this {'👍' if given['rating'] > 0 else '👎'}")


def show_answer_footer(model: str | None, status: str, timings: dict[str, Any] | None) -> None:
    parts = [model or "?"]
    if timings and timings.get("ttft_ms") is not None:
        parts.append(f"first token {timings['ttft_ms']:.0f} ms")
    if timings and timings.get("total_ms") is not None:
        parts.append(f"total {timings['total_ms']:.0f} ms")
    if status != "complete":
        parts.append(f"status: {status}")
    st.caption(" · ".join(parts))


def history(client: BackendClient) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The conversation's current thread, and for each of its messages the ids of it and
    its siblings (the other answers to its question, the other versions of a question)."""
    state = st.session_state
    if not state.conversation_id:
        return [], {}
    detail = client.conversation(state.conversation_id)
    by_id = {m["id"]: m for m in detail["messages"]}
    family: dict[tuple[str | None, str], list[str]] = {}
    for m in detail["messages"]:  # oldest first: siblings numbered in the order written
        family.setdefault((m["parent_id"], m["role"]), []).append(m["id"])
    thread = [by_id[i] for i in detail["active_branch"] if i in by_id]
    return thread, {m["id"]: family[(m["parent_id"], m["role"])] for m in thread}


def branch_switcher(client: BackendClient, message: dict[str, Any], siblings: list[str]) -> None:
    """‹ 2 / 3 › on a message with siblings: the arrows make a sibling's thread current."""
    if len(siblings) < 2:
        return
    at = siblings.index(message["id"])
    back, where, forward, _ = st.columns([1, 2, 1, 8])
    where.caption(f"{at + 1} / {len(siblings)}")
    for column, step, label in ((back, -1, "‹"), (forward, 1, "›")):
        target = at + step
        if column.button(
            label,
            key=f"branch-{step}-{message['id']}",
            disabled=not 0 <= target < len(siblings),
            help="Show the previous version" if step < 0 else "Show the next version",
        ):
            client.choose_branch(st.session_state.conversation_id, siblings[target])
            st.rerun()


REVISE_ASKS = ("Shorter", "More detail", "Only from the sources")


def revise_box(message: dict[str, Any]) -> str | None:
    """Under an answer: one-click asks and free text; the feedback chosen, if any."""
    with st.expander("✎ Revise this answer"):
        columns = st.columns(len(REVISE_ASKS))
        for column, ask in zip(columns, REVISE_ASKS, strict=True):
            if column.button(ask, key=f"ask-{ask}-{message['id']}"):
                return ask
        written = st.text_input(
            "What should change?",
            key=f"feedback-{message['id']}",
            placeholder="shorter, and say which year",
        )
        if st.button("Revise", key=f"revise-{message['id']}") and written.strip():
            return written.strip()
    return None


def edit_box(message: dict[str, Any]) -> str | None:
    """Under a question: edit it and send it again (a new branch; the old one stays)."""
    with st.expander("✎ Edit"):
        edited = st.text_area(
            "Edited question", value=message["content"], key=f"edit-{message['id']}"
        )
        if st.button("Send edited", key=f"send-edit-{message['id']}") and edited.strip():
            return edited.strip()
    return None


def searched_for(query: str | None, question: str | None) -> None:
    """What a follow-up's sources were searched for, when it is not the question itself."""
    if query and query != question:
        st.caption(f"Searched for: {query}")


def stop_answer(client: BackendClient, answer: StreamedAnswer) -> None:
    """The Stop button: the backend ends the answer and keeps its text so far."""
    if message_id := answer.meta.get("assistant_message_id"):
        try:
            client.stop(message_id)
        except BackendError as exc:
            st.session_state.notice = exc.message


def queue_notice(position: int) -> str:
    """What a waiting answer shows (the local model answers one at a time)."""
    if position == 1:
        return "⏳ Waiting for the model: your answer is next."
    return f"⏳ Waiting for the model: {position - 1} answers before yours."


def stream_answer(client: BackendClient, tokens: Any, answer: StreamedAnswer) -> None:
    """Stream into the page. Answers are asked to `finish`: a rerun or a cut connection
    loses nothing (the next run resumes them); only Stop ends one."""
    st.button("⏹ Stop", key="stop", on_click=stop_answer, args=(client, answer))
    waiting = st.empty()

    def show_place(position: int | None) -> None:
        if position:
            waiting.info(queue_notice(position))
        else:
            waiting.empty()

    answer.on_queued = show_place
    st.write_stream(tokens)
    if answer.error:
        st.error(answer.error["message"])
    elif answer.done:
        show_answer_footer(answer.meta.get("model"), "complete", answer.done.get("timings"))
    show_sources(answer.sources)
    searched_for(answer.search_query, None)


def chat(client: BackendClient, options: dict[str, Any]) -> None:
    state = st.session_state
    messages, siblings = history(client)
    if not messages:
        st.info("Ask a question. Answers cite the documents you upload in the Documents tab.")
    pending: tuple[str, str, str] | None = None  # (what, message id, text) to stream next
    question: str | None = None
    for index, message in enumerate(messages):
        if message["status"] == "streaming":  # still being written: follow it live
            with st.chat_message("assistant"):
                answer = StreamedAnswer()
                stream_answer(client, client.resume(message["id"], answer), answer)
            continue
        with st.chat_message(message["role"]):
            st.markdown(message["content"] or "_(no answer)_")
            branch_switcher(client, message, siblings[message["id"]])
            if message["role"] == "user":
                question = message["content"]
                if (edited := edit_box(message)) is not None:
                    pending = ("edit", message["id"], edited)
                continue
            if message.get("revision_feedback"):
                st.caption(f"Revised: {message['revision_feedback']}")
            show_answer_footer(message["model"], message["status"], message["timings"])
            show_sources(message.get("sources") or [])
            searched_for(message.get("search_query"), question)
            show_feedback(client, message)
            if index == len(messages) - 1:
                if (feedback := revise_box(message)) is not None:
                    pending = ("revise", message["id"], feedback)
                if st.button("↻ Regenerate", key="regenerate"):
                    pending = ("regenerate", message["id"], "")
    if pending is not None:
        what, message_id, text = pending
        body: dict[str, Any] = {"retrieval": options}
        if state.get("model"):
            body["model"] = state.model
        if what == "edit":
            with st.chat_message("user"):
                st.markdown(text)
        with st.chat_message("assistant"):
            answer = StreamedAnswer()
            if what == "revise":
                tokens = client.revise(message_id, text, answer, body)
            elif what == "edit":
                tokens = client.edit(message_id, text, answer, body)
            else:
                tokens = client.regenerate(state.conversation_id, answer, body)
            stream_answer(client, tokens, answer)
        st.rerun()
    if prompt := st.chat_input("Ask something"):
        state.filter_error = None
        with st.chat_message("user"):
            st.markdown(prompt)
        answer = StreamedAnswer()
        body = {"retrieval": options}
        if state.get("model"):
            body["model"] = state.model
        try:
            with st.chat_message("assistant"):
                tokens = client.stream_chat(prompt, state.conversation_id, answer, body)
                stream_answer(client, tokens, answer)
        except BackendError as exc:
            if exc.status != 422:
                raise
            if exc.is_about("body", "retrieval", "filter"):
                state.filter_error = exc.message  # shown again beside the filter editor
            st.error(exc.message)
            return
        state.conversation_id = answer.meta.get("conversation_id", state.conversation_id)
        st.rerun()


# --- documents -----------------------------------------------------------------------------
def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


UPLOADED = {
    "created": "added",
    "updated": "replaced the earlier version",
    "unchanged": "already there, unchanged",
}


def upload_limit_mb(me: dict[str, Any]) -> int:
    """The uploader's limit: the backend's, in whole MB, within the app server's own."""
    backend = max(1, me["max_upload_bytes"] // 2**20)
    return min(backend, int(st.get_option("server.maxUploadSize")))


def documents(client: BackendClient, me: dict[str, Any]) -> None:
    with st.form("upload", clear_on_submit=True):
        file = st.file_uploader(
            "Add a document (.txt, .md, .html, .pdf)",
            type=["txt", "md", "markdown", "html", "htm", "pdf"],
            max_upload_size=upload_limit_mb(me),
        )
        metadata = st.text_input("Metadata as JSON (optional)", placeholder='{"team": "finance"}')
        namespace = "private"
        if me["can_publish"]:  # only publishers may write to the shared namespace
            namespace = st.radio(
                "Visible to",
                ["private", "shared"],
                horizontal=True,
                format_func=lambda n: "only me" if n == "private" else "everyone",
            )
        if st.form_submit_button("Upload") and file is not None:
            try:
                meta = json.loads(metadata) if metadata.strip() else {}
                result = client.upload(file.name, file.getvalue(), meta, namespace)
                doc = result["documents"][0]
                chunks = plural(doc["chunks"], "passage")
                st.success(f"{file.name}: {UPLOADED.get(doc['status'], doc['status'])} ({chunks})")
            except json.JSONDecodeError as exc:
                st.error(f"The metadata is not JSON: {exc.msg} (column {exc.colno}).")
            except BackendError as exc:
                st.error(f"{file.name} was not added: {'; '.join(exc.reasons)}")
    docs = client.documents()
    st.subheader(f"Your documents ({len(docs)})")
    for doc in docs:
        name, size, action = st.columns([6, 2, 1])
        title = doc["metadata"].get("title") or doc["source"] or doc["id"]
        visible = "everyone" if doc["namespace"] == "shared" else "only you"
        name.markdown(f"**{title}** · {visible}")
        size.caption(plural(doc["chunk_count"], "passage"))
        if action.button("🗑", key=f"del-{doc['namespace']}-{doc['id']}", help="Delete"):
            client.delete_document(doc["id"], doc["namespace"])
            st.rerun()


def feedback_export(client: BackendClient) -> None:
    """For admins: what users said (ratings, preference pairs, 👎 cases) to download."""
    state = st.session_state
    with st.sidebar.expander("Feedback export (admin)"):
        st.caption(
            "Rated answers, preference pairs and 👎 answers as evaluation cases, as NDJSON; "
            "users pseudonymised. `eval-answers --cases` runs the cases again."
        )
        if st.button("Prepare export", key="feedback-export"):
            state.feedback_export = client.export_feedback()
        exported = state.get("feedback_export")
        if exported is not None:
            st.caption(f"{len(exported.splitlines())} records")
            st.download_button(
                "Download feedback.ndjson", exported, file_name="feedback.ndjson",
                mime="application/x-ndjson", key="feedback-download",
            )  # fmt: skip


# --- page ----------------------------------------------------------------------------------
def model_key_panel(client: BackendClient) -> None:
    """Your own model key: your chats then run on it (masked once saved)."""
    providers = sign_in_options(client)
    if providers.get("user_keys") == "off":
        return
    with st.sidebar.expander("Your model key"):
        saved = client.model_key()
        if saved:
            st.caption(
                f"{saved['provider']} key {saved['hint']}"
                + (f" · {saved['model']}" if saved.get("model") else "")
                + (" (from your sign-in)" if saved["source"] == "sign-in" else "")
            )
            if st.button("Forget my key"):
                client.delete_model_key()
                st.rerun()
        with st.form("model_key"):
            provider = st.selectbox("Provider", ["huggingface", "openai-compatible"])
            api_key = st.text_input("Key", type="password")
            base_url = st.text_input("Base URL (optional for Hugging Face)")
            model = st.text_input("Model")
            if st.form_submit_button("Save key"):
                try:
                    client.save_model_key(
                        provider=provider, api_key=api_key, base_url=base_url, model=model
                    )
                    st.rerun()
                except BackendError as exc:
                    st.error(exc.message)
        if providers.get("oidc") and st.button(f"Link a {providers['oidc_name']} sign-in"):
            url = client.link_url(app_url()).replace(client.base_url, backend_public_url(client), 1)
            st.markdown(f"[Continue with {providers['oidc_name']}]({url})")


def main() -> None:
    st.set_page_config(page_title="ragstream", page_icon="💬", layout="wide")
    client = session_client()
    state = st.session_state
    redeem_ticket(client)
    if state.token is None:
        sign_in(client)
        return
    try:
        me = client.me()
        st.sidebar.markdown(f"Signed in as **{me['username']}**")
        if st.sidebar.button("Sign out"):
            state.token, state.conversation_id = None, None
            st.rerun()
        models = [m["id"] for m in client.models()]
        if len(models) > 1:
            st.sidebar.selectbox("Model", models, key="model")
        model_key_panel(client)
        conversations_panel(client)
        options = retrieval_panel()
        if me.get("is_admin"):
            feedback_export(client)
        chat_tab, docs_tab = st.tabs(["Chat", "Documents"])
        with chat_tab:
            chat(client, options)
        with docs_tab:
            documents(client, me)
    except BackendError as exc:
        if exc.status == 401:
            state.token, state.conversation_id = None, None
            state.notice = "Your session has expired; please sign in again."
            st.rerun()
        st.error(f"⚠️ {exc.message}")
        st.button("Retry")


main()
