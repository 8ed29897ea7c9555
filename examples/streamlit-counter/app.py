"""A Streamlit counter whose count lives in the server process (Streamlit's session state).

The page shows the count, the label this version was deployed with (COUNTER_LABEL, from [env])
and the process serving it, so a tab can tell which version and which instance holds its count.
It knows nothing of flotilla: the injected browser client keeps each tab on its version.
"""

import os

import streamlit as st

st.set_page_config(page_title="Streamlit counter")

if "count" not in st.session_state:
    st.session_state.count = 0

if st.button("Increment"):
    st.session_state.count += 1

st.markdown(f"count: **{st.session_state.count}**")
st.markdown(f"label: **{os.environ.get('COUNTER_LABEL', 'unset')}**")
st.markdown(f"process: **{os.getpid()}**")
# Whether the secret arrived, never its value.
st.markdown(f"token: **{'set' if os.environ.get('COUNTER_TOKEN') else 'missing'}**")
