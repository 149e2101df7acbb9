# Overrides only from the pod's owner: an addition to trustee-policy.rego
# (the same package; load both) for pod VMs whose overrides must come from
# the pod's initdata, not from the host's user-data.
#
# Trustee hands a policy the initdata's [data] entries as `init_data_claims`
# once the verifier has checked the initdata's digest against the TEE's or
# the vTPM's (PCR 8, HOSTDATA, MRCONFIGID); podvm-bootstrap reads its
# requests from the [data] entry "podvm-bootstrap.yaml" (`images:`, component
# -> image), and each override's LaunchComponent record says who asked
# (`requested_by`: user-data | initdata). With this file, the launch is
# denied when a component ran an override that
#   - the user-data asked for (requested_by is not initdata), or
#   - the record says the initdata asked for, but the initdata the verifier
#     checked does not ask for that component at that digest (or no checked
#     initdata came with the evidence).
package policy

import rego.v1

# The images the pod's owner asked for, by component; none without a checked
# initdata or without the entry.
initdata_requests := requests if {
	text := input.init_data_claims["podvm-bootstrap.yaml"]
	is_string(text)
	yaml.is_valid(text)
	requests := yaml.unmarshal(text).images
	is_object(requests)
} else := {}

# The owner's request for that component names the digest that ran.
asked_in_initdata(c) if {
	request := initdata_requests[c.component]
	is_string(request)
	endswith(request, concat("", ["@", c.digest]))
}

deny contains sprintf("component %v ran an override the %v asked for, not the pod's initdata", [c.component, c.requested_by]) if {
	some c in components
	c.source == "override"
	c.requested_by != "initdata"
}

deny contains sprintf("component %v ran an override without requested_by", [c.component]) if {
	some c in components
	c.source == "override"
	not c.requested_by
}

deny contains sprintf("component %v ran override %v, which the checked initdata does not ask for", [c.component, c.digest]) if {
	some c in components
	c.source == "override"
	c.requested_by == "initdata"
	not asked_in_initdata(c)
}
