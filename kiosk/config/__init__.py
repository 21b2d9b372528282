"""Configuration: YAML (safe_load) validated into frozen dataclasses before any hardware is touched.

Every problem is collected and reported at once as "section.key: message"; unknown keys get a "did you mean"
suggestion. Each dataclass field carries its own bounds in `metadata`, so the schema lives in one place.

Nothing in a file gets past as a traceback: the file's size, the YAML's nesting and alias expansion are bounded,
and a value that would only fail later (NaN, a lone surrogate, a NUL in a path) is refused here, in one line.

One room per job, each importing only the ones before it:

    fields          the field machinery: bounds in metadata, value checks, how a value is shown, "did you mean"
    audio, speech, buttons, presence, knob, captions, hours, web, fleet, storage, phrases
                    the sections' dataclasses (phrases: also the lines, languages and the checks on any text)
    secrets         `Secret`, key and token files
    model           `Config`, the whole, with its methods
    validation      a mapping → `Config`, with the rules that span sections
    staff_settings  what staff may set, laid over the operator's file; unusable settings set aside
    loader          `load_config`, `parse_config`: YAML read within its bounds (the only module importing yaml)

Everyone else imports from `kiosk.config` itself.
"""

from __future__ import annotations

from kiosk.config.audio import AudioConfig as AudioConfig
from kiosk.config.buttons import ButtonConfig as ButtonConfig
from kiosk.config.captions import CaptionsConfig as CaptionsConfig
from kiosk.config.fields import unencodable_at as unencodable_at
from kiosk.config.fleet import MqttConfig as MqttConfig
from kiosk.config.fleet import OscConfig as OscConfig
from kiosk.config.fleet import default_device_id as default_device_id
from kiosk.config.hours import WEEKDAYS as WEEKDAYS
from kiosk.config.hours import Announcement as Announcement
from kiosk.config.hours import AttractConfig as AttractConfig
from kiosk.config.hours import ClockConfig as ClockConfig
from kiosk.config.hours import OpeningHours as OpeningHours
from kiosk.config.hours import QuietHours as QuietHours
from kiosk.config.knob import KnobConfig as KnobConfig
from kiosk.config.loader import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
from kiosk.config.loader import MAX_CONFIG_BYTES as MAX_CONFIG_BYTES
from kiosk.config.loader import MAX_YAML_DEPTH as MAX_YAML_DEPTH
from kiosk.config.loader import MAX_YAML_NODES as MAX_YAML_NODES
from kiosk.config.loader import _SafeLoaderWithoutDuplicates as _SafeLoaderWithoutDuplicates  # patched by a test
from kiosk.config.loader import load_config as load_config
from kiosk.config.loader import parse_config as parse_config
from kiosk.config.loader import read_staff_settings as read_staff_settings
from kiosk.config.loader import yaml_mapping_of as yaml_mapping_of
from kiosk.config.model import Config as Config
from kiosk.config.phrases import LANGUAGE_NAMES as LANGUAGE_NAMES
from kiosk.config.phrases import MAX_TEXT_CHARS as MAX_TEXT_CHARS
from kiosk.config.phrases import PHRASE_ID as PHRASE_ID
from kiosk.config.phrases import LanguageConfig as LanguageConfig
from kiosk.config.phrases import phrase_problem as phrase_problem
from kiosk.config.phrases import right_to_left as right_to_left
from kiosk.config.phrases import text_problem as text_problem
from kiosk.config.presence import PresenceConfig as PresenceConfig
from kiosk.config.secrets import MAX_SECRET_BYTES as MAX_SECRET_BYTES
from kiosk.config.secrets import Secret as Secret
from kiosk.config.secrets import read_secret_file as read_secret_file
from kiosk.config.secrets import resolve_api_key as resolve_api_key
from kiosk.config.speech import OpenAIConfig as OpenAIConfig
from kiosk.config.speech import PiperConfig as PiperConfig
from kiosk.config.speech import SpeechConfig as SpeechConfig
from kiosk.config.staff_settings import SET_ASIDE as SET_ASIDE
from kiosk.config.staff_settings import STAFF_SETTABLE as STAFF_SETTABLE
from kiosk.config.staff_settings import overlay_staff_settings as overlay_staff_settings
from kiosk.config.staff_settings import set_aside_staff_settings as set_aside_staff_settings
from kiosk.config.staff_settings import staff_settings_path as staff_settings_path
from kiosk.config.staff_settings import staff_settings_problem as staff_settings_problem
from kiosk.config.storage import CacheConfig as CacheConfig
from kiosk.config.storage import HistoryConfig as HistoryConfig
from kiosk.config.validation import validate as validate
from kiosk.config.web import ApiConfig as ApiConfig
from kiosk.config.web import StaffConfig as StaffConfig
