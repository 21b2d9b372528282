"""Captions for visitors who cannot hear the speaker, or would rather read: the sentence being spoken with the word
being said highlighted, pushed live to a screen beside the case and to visitors' phones, and the exhibit's
transcript.

    timing      each word's start time in a line, from its text and its audio (kept in the line's cache entry)
    feed        what the captions show now, told to every page that follows them (server-sent events)
    web         the public, read-only server: /captions, /captions/events, /transcript
    transcript  every line of the exhibit in every language it offers
"""
