# A Trustee attestation policy for the measured launch of a pod VM booted by
# podvm-bootstrap: which image, by digest, ran as each component.
#
# It reads the `uefi_event_logs` claims a Trustee verifier derives from the
# event log the attester sends (`cc_eventlog`): each record of register 23
# (measure.pcr) of domain github.com/confidential-containers is a
# LaunchComponent {"component","digest","image","source"[,"requested_by"]}
# or the closing LaunchComplete {"components":N}. The verifier has replayed
# the log against the quoted register before the policy runs; the policy
# allows the launch only when
#   - every launch record's digest matches its event (the text shown is the
#     text that was extended),
#   - the launch is complete: one LaunchComplete, last, counting the
#     components before it,
#   - every component ran once, with a digest the reference values list for
#     it (an override to an unlisted image is denied), and every component
#     of the reference launch set ran.
#
# Reference values (Trustee's RVPS, read with query_reference_value), from
# `podvm-bootstrap plan --json` on the pod VM image's configuration:
#   podvm_launch_components   the names of the components (components[].name)
#   podvm_launch.<name>       the digests allowed for that component
#                             (components[].digest; list a variant's or an
#                             accepted override's digest here too)
#
# To fold it into Trustee's EAR policy, require `allow` in the rule that
# sets the `executables` trust claim of your platform, e.g.
#   executables := 3 if { input["az-snp-vtpm"]; ...; allow }
package policy

import rego.v1

launch_register := 23

launch_domain := "github.com/confidential-containers"

# The launch records, from whichever verifier's claims carry them.
launch_events := [event |
	some tee
	some event in input[tee].uefi_event_logs
	event.index == launch_register
	event.type_name == "EV_EVENT_TAG"
	event.details.data.domain == launch_domain
]

components := [event.details.data.content |
	some event in launch_events
	event.details.data.operation == "LaunchComponent"
]

completes := [event |
	some event in launch_events
	event.details.data.operation == "LaunchComplete"
]

launched := {c.component | some c in components}

# Reference values; one that the RVPS does not have (null) lists nothing.
reference_components := names if {
	names := query_reference_value("podvm_launch_components")
	is_array(names)
} else := []

reference_digests(name) := digests if {
	digests := query_reference_value(concat(".", ["podvm_launch", name]))
	is_array(digests)
} else := []

launch_complete if {
	count(completes) == 1
	last := launch_events[count(launch_events) - 1]
	last.details.data.operation == "LaunchComplete"
	last.details.data.content.components == count(components)
}

default allow := false

allow if {
	count(launch_events) > 0
	count(deny) == 0
}

deny contains "a launch record's digest does not match its event" if {
	some event in launch_events
	not event.digest_matches_event
}

deny contains "the launch is incomplete: no single LaunchComplete closing it" if {
	not launch_complete
}

deny contains sprintf("component %v ran %v, a digest the reference values do not list", [c.component, c.digest]) if {
	some c in components
	not c.digest in reference_digests(c.component)
}

deny contains "a component was launched twice" if {
	count(launched) != count(components)
}

deny contains sprintf("component %v of the reference launch set did not run", [name]) if {
	some name in reference_components
	not name in launched
}

deny contains "a LaunchComponent without a component name and digest" if {
	some c in components
	not is_string(c.component)
}

deny contains "a LaunchComponent without a component name and digest" if {
	some c in components
	not is_string(c.digest)
}

deny contains "no reference launch set (podvm_launch_components)" if {
	count(reference_components) == 0
}
